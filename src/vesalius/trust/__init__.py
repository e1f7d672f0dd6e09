"""Trust: calibration, uncertainty and explanations of what a model relied on."""
