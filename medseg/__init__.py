"""medseg: volumetric medical image segmentation, starting with lung nodules in chest CT."""

from __future__ import annotations

__version__ = "0.1.0"

from medseg.errors import InputError
from medseg.io import Volume, read_volume, write_mask, write_volume

__all__ = ["InputError", "Volume", "__version__", "read_volume", "write_mask", "write_volume"]
