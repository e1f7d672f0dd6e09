"""Segmentation engine: preprocessing, patch sampling, training and sliding-window prediction."""
