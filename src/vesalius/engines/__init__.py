"""Task engines: how each task type is planned, trained, predicted and evaluated."""
