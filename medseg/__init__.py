"""medseg: volumetric medical image segmentation, starting with lung nodules in chest CT.

>>> import medseg
>>> vol = medseg.read_volume("scan.nii.gz")           # doctest: +SKIP
>>> result = medseg.infer("scan.nii.gz", "out/")      # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from medseg.errors import InputError
from medseg.io import Volume, read_volume, write_mask, write_volume

__all__ = [
    "InputError",
    "Volume",
    "__version__",
    "batch",
    "evaluate",
    "export",
    "infer",
    "load_task",
    "measure",
    "read_volume",
    "segment",
    "train",
    "train_fp",
    "write_mask",
    "write_outputs",
    "write_volume",
]


def __getattr__(name: str) -> Any:
    # segment/write_outputs/train/infer/evaluate/batch/measure load their stage on first use (see medseg.api)
    if name in ("segment", "write_outputs", "train", "train_fp", "infer", "evaluate", "batch", "measure", "export",
                "load_task"):
        from medseg import api

        return getattr(api, name)
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")
