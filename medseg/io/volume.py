"""`Volume`: a 3D array with its physical geometry, passed between every stage of medseg.

Conventions (fixed for the whole package):

* ``array`` is indexed ``[i, j, k]`` (the NIfTI / nibabel / MONAI order; ``i`` varies fastest
  on disk). SimpleITK's ``[k, j, i]`` arrays are transposed on the way in.
* Geometry is stored in the DICOM/ITK **LPS** world frame: ``origin`` is the world position (mm)
  of voxel ``(0, 0, 0)``, ``direction`` is a 3x3 matrix whose *columns* are the unit world
  directions of the ``i``, ``j`` and ``k`` axes, ``spacing`` is the voxel size along them (mm).
  So ``world_lps = origin + direction @ (spacing * ijk)``.
* ``affine_ras`` gives the equivalent 4x4 NIfTI (RAS) affine for nibabel and MONAI.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Volume:
    """A 3D image (or label map) with spacing, origin, direction and modality."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str | None = None
    source: str | None = None
    #: Free-form facts the reader learned (e.g. DICOM series UID); never patient identifiers.
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume needs a 3D array, got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not all(np.isfinite(self.spacing)) or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be finite and positive, got {self.spacing}")
        if not (np.all(np.isfinite(self.origin)) and np.all(np.isfinite(self.direction))):
            raise ValueError(f"origin and direction must be finite, got {self.origin}, {self.direction.tolist()}")

    # ----------------------------------------------------------------- geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 voxel-index -> LPS world (mm) matrix."""
        aff = np.eye(4)
        aff[:3, :3] = self.direction @ np.diag(self.spacing)
        aff[:3, 3] = self.origin
        return aff

    @property
    def affine_ras(self) -> np.ndarray:
        """4x4 voxel-index -> RAS world (mm) matrix, as NIfTI/nibabel/MONAI use."""
        aff = self.affine_lps
        aff[:3, :] = _LPS_TO_RAS @ aff[:3, :]
        return aff

    @property
    def orientation(self) -> str:
        """Three letters naming where each array axis points (nibabel convention), e.g. ``"RAS"``."""
        import nibabel as nib

        return "".join(nib.orientations.aff2axcodes(self.affine_ras))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous voxel indices ``(..., 3)`` to LPS world mm ``(..., 3)``."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ (self.direction @ np.diag(self.spacing)).T + np.asarray(self.origin)

    def world_to_index(self, xyz_lps: np.ndarray) -> np.ndarray:
        """LPS world mm ``(..., 3)`` to continuous voxel indices ``(..., 3)``."""
        m = np.linalg.inv(self.direction @ np.diag(self.spacing))
        return (np.asarray(xyz_lps, dtype=np.float64) - np.asarray(self.origin)) @ m.T

    def same_grid(self, other: Volume, atol: float = 1e-4) -> bool:
        """True when ``other`` lies on exactly this voxel grid (shape, spacing, origin, direction)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """A volume on the same grid holding ``array`` (e.g. a mask derived from this image)."""
        if tuple(array.shape) != self.shape and "spacing" not in changes:
            raise ValueError(f"array shape {array.shape} does not match grid {self.shape}")
        return replace(self, array=array, meta=dict(self.meta), **changes)

    @classmethod
    def from_affine_ras(cls, array: np.ndarray, affine: np.ndarray, **kwargs: Any) -> Volume:
        """Build from a NIfTI-style RAS affine (shear is not representable and is rejected)."""
        affine = np.asarray(affine, dtype=np.float64)
        lin = _LPS_TO_RAS @ affine[:3, :3]
        spacing = np.linalg.norm(lin, axis=0)
        if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise ValueError("affine has a zero-length or non-finite axis")
        direction = lin / spacing
        origin = _LPS_TO_RAS @ affine[:3, 3]
        return cls(array=array, spacing=tuple(spacing), origin=tuple(origin), direction=direction, **kwargs)

    def summary(self) -> dict[str, Any]:
        """Geometry facts as plain JSON-able values (used by ``medseg info``)."""
        out: dict[str, Any] = {
            "size": list(self.shape),
            "spacing": [round(s, 6) for s in self.spacing],
            "origin": [round(o, 4) for o in self.origin],
            # row-major, exactly as SimpleITK's GetDirection()
            "direction": [round(float(v), 6) for v in self.direction.flatten()],
            "orientation": self.orientation,
            "modality": self.modality,
        }
        return out
