"""Image classification: datasets (class folders, CSV, MedMNIST), plan, networks, training, calibration, prediction."""
