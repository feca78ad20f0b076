"""The result: :class:`Phantom`, the array orientation, and the JSON-able ``info`` facts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.io.volume import Volume

from .canvas import Canvas
from .nodules import Placed


@dataclass
class Phantom:
    """A synthetic chest CT with its ground truth, all on one voxel grid.

    ``ct`` int16 HU; ``nodules`` uint16 instance labels 1..N; ``lungs`` uint8 0/1 lung mask
    (nodules included); ``info`` JSON-able facts (geometry, ``nodules`` list). ``anatomy`` is an
    extra uint8 map (1 small vessel, 2 large vessel, 3 airway, 4 bone) kept in memory only.
    """

    ct: Volume
    nodules: Volume
    lungs: Volume
    info: dict[str, Any]
    anatomy: Volume | None = None


def orientation_flips(code: str) -> tuple[bool, bool, bool]:
    """Which canonical (LPS) axes to flip to store the arrays in orientation ``code``."""
    code = str(code).upper()
    allowed = ("LR", "PA", "SI")
    if len(code) != 3 or any(c not in pair for c, pair in zip(code, allowed)):
        raise ValueError(f"orientation must be 3 letters from L/R, P/A, S/I in that order (e.g. LPS, RAS), got {code!r}")
    return tuple(c != pair[0] for c, pair in zip(code, allowed))  # type: ignore[return-value]


def assemble(canvas: Canvas, ct16: np.ndarray, placed: list[Placed], flips: tuple[bool, bool, bool],
             orientation: str, seed: int, noise_hu: float) -> Phantom:
    """The :class:`Phantom`: arrays flipped to ``orientation`` on the matching grid, plus ``info``."""
    direction = np.diag([-1.0 if f else 1.0 for f in flips])
    corner = np.array([(n - 1) if f else 0 for n, f in zip(canvas.shape, flips)], dtype=float)
    origin = canvas.origin + corner * canvas.spacing

    def store(a: np.ndarray) -> np.ndarray:
        axes = tuple(i for i, f in enumerate(flips) if f)
        return np.ascontiguousarray(np.flip(a, axis=axes)) if axes else a

    meta = {"phantom": True}
    ct = Volume(store(ct16), tuple(canvas.spacing), tuple(origin), direction, modality="CT", meta=meta)
    nod = ct.with_array(store(canvas.labels), modality=None)
    lungs = ct.with_array(store(canvas.lungs), modality=None)
    anatomy = ct.with_array(store(canvas.anatomy), modality=None)
    vv = float(np.prod(canvas.spacing))
    info = {
        "generator": "medseg.data.phantom",
        "seed": seed,
        "size": list(canvas.shape),
        "spacing": [float(v) for v in canvas.spacing],
        "origin": [round(float(v), 6) for v in origin],
        "direction": [float(v) for v in direction.flatten()],
        "orientation": orientation,
        "modality": "CT",
        "noise_hu": float(noise_hu),
        "lung_volume_ml": round(float(canvas.lungs.sum()) * vv / 1000.0, 2),
        "diameter_definition": "equivalent-sphere diameter of the voxel-counted label volume",
        "nodules": [_nodule_facts(ct, p, vv) for p in placed],
    }
    return Phantom(ct=ct, nodules=nod, lungs=lungs, info=info, anatomy=anatomy)


def _nodule_facts(ct: Volume, p: Placed, vv: float) -> dict[str, Any]:
    """One nodule's entry in ``info["nodules"]``; sizes from its voxel count (``vv``: voxel mm3)."""
    vol_mm3 = p.voxels * vv
    ijk = np.rint(ct.world_to_index(p.centre_lps)).astype(int)
    return {
        "id": p.label,
        "kind": p.spec.kind,
        "location": p.spec.location,
        "centre_lps_mm": [round(float(v), 3) for v in p.centre_lps],
        "centre_ijk": [int(v) for v in ijk],
        "diameter_mm": round((6.0 * vol_mm3 / math.pi) ** (1.0 / 3.0), 3),
        "nominal_diameter_mm": float(p.spec.diameter_mm),
        "volume_mm3": round(vol_mm3, 4),
        "voxels": p.voxels,
    }
