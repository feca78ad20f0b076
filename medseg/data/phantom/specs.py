"""What nodules to place: kinds, locations, :class:`NoduleSpec` and ready-made nodule sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = ("solid", "part-solid", "ground-glass")
LOCATIONS = ("isolated", "juxta-vascular", "juxta-pleural")


@dataclass(frozen=True)
class NoduleSpec:
    """What nodule to place: kind, location and nominal diameter (mm, 3-30)."""

    kind: str = "solid"
    location: str = "isolated"
    diameter_mm: float = 8.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"nodule kind must be one of {KINDS}, got {self.kind!r}")
        if self.location not in LOCATIONS:
            raise ValueError(f"nodule location must be one of {LOCATIONS}, got {self.location!r}")
        if not 1.0 <= float(self.diameter_mm) <= 40.0:
            raise ValueError(f"nodule diameter_mm must be within 1-40 mm, got {self.diameter_mm}")


def as_spec(item: NoduleSpec | dict[str, Any]) -> NoduleSpec:
    """A :class:`NoduleSpec` from a spec or a dict of its fields."""
    if isinstance(item, NoduleSpec):
        return item
    if isinstance(item, dict):
        return NoduleSpec(**item)
    raise ValueError(f"a nodule spec must be a NoduleSpec or a dict, got {type(item).__name__}")


def subsolid_nodules(seed: int, count: int = 8) -> list[NoduleSpec]:
    """A nodule list weighted to what models miss: half ground-glass, a quarter part-solid, most
    of them small (4.5-12 mm; the last quarter 12-22 mm), locations at random.

    The default random set (``make_phantom(nodules=None)``) is half solid with sizes up to 30 mm;
    whole-scan training on it sees few small subsolid nodules. Deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    kinds = ("ground-glass", "ground-glass", "part-solid", "solid")
    specs = []
    for i in range(count):
        location = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
        small = i < count - count // 4
        diameter = float(np.round(rng.uniform(4.5, 12.0) if small else rng.uniform(12.0, 22.0), 1))
        specs.append(NoduleSpec(kinds[i % 4], location, diameter))
    return specs
