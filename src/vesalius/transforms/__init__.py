"""Pure, invertible preprocessing on ``Volume``: each returns a new volume and records what it did.

Undo any chain with ``invert``, which brings a model-space result back onto the original grid exactly.
"""

from vesalius.transforms.crop_pad import crop, crop_to_foreground, pad
from vesalius.transforms.intensity import WINDOW_PRESETS, WindowPreset, clip, percentile_normalize, window, zscore
from vesalius.transforms.invert import invert
from vesalius.transforms.orientation import to_canonical
from vesalius.transforms.resample import resample, resample_to_grid

__all__ = [
    "WINDOW_PRESETS",
    "WindowPreset",
    "clip",
    "crop",
    "crop_to_foreground",
    "invert",
    "pad",
    "percentile_normalize",
    "resample",
    "resample_to_grid",
    "to_canonical",
    "window",
    "zscore",
]
