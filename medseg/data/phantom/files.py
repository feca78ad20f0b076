"""Writing a phantom to disk: NIfTI volumes and the JSON facts, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg.io.atomic import write_json_atomic
from medseg.io.writers import write_volume

from .output import Phantom


def save_phantom(phantom: Phantom, out_dir: str | os.PathLike[str], name: str,
                 *, anatomy: bool = False) -> dict[str, Path]:
    """Write ``<name>.nii.gz`` (CT), ``<name>_nodules.nii.gz``, ``<name>_lungs.nii.gz`` and
    ``<name>.json`` (``phantom.info`` plus the file names) atomically into ``out_dir``.

    With ``anatomy=True`` also ``<name>_anatomy.nii.gz`` (vessels, airways, bone).
    Returns the written paths keyed ``ct``, ``nodules``, ``lungs``, ``json`` (``anatomy``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "ct": out / f"{name}.nii.gz",
        "nodules": out / f"{name}_nodules.nii.gz",
        "lungs": out / f"{name}_lungs.nii.gz",
    }
    write_volume(phantom.ct, paths["ct"], dtype=np.int16)
    write_volume(phantom.nodules, paths["nodules"], dtype=np.uint16)
    write_volume(phantom.lungs, paths["lungs"], dtype=np.uint8)
    if anatomy and phantom.anatomy is not None:
        paths["anatomy"] = out / f"{name}_anatomy.nii.gz"
        write_volume(phantom.anatomy, paths["anatomy"], dtype=np.uint8)
    info = dict(phantom.info)
    info["files"] = {key: p.name for key, p in paths.items()}
    paths["json"] = out / f"{name}.json"
    write_json_atomic(paths["json"], info)
    return paths
