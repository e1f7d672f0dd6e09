"""Vesalius: medical images from the archive to a usable diagnosis and back."""

__version__ = "0.1.0"
