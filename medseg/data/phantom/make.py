"""``make_phantom``: check the arguments, derive the random streams, and run the painting steps
in order (dense pass, ribs, airways, vessels, airway lumen, nodules, noise, assembly)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .airways import draw_airways, redraw_airway_lumen
from .bones import draw_ribs
from .canvas import Canvas
from .nodules import place_nodule, place_random_nodules
from .noise import finish_ct
from .output import Phantom, assemble, orientation_flips
from .specs import NoduleSpec, as_spec
from .thorax import dense_pass
from .vessels import draw_vessels


def make_phantom(
    seed: int = 0,
    shape: Sequence[int] = (256, 256, 128),
    spacing: Sequence[float] = (1.0, 1.0, 2.0),
    nodules: Iterable[NoduleSpec | dict[str, Any]] | None = None,
    orientation: str = "LPS",
    *,
    noise_hu: float = 25.0,
    noise_smoothing: float = 0.6,
    body_fraction: float = 0.9,
    max_tries: int = 400,
) -> Phantom:
    """Generate a chest-CT phantom; the same arguments always give identical arrays.

    Args:
        seed: random seed (anatomy, nodule placement and noise all derive from it).
        shape: array shape ``(i, j, k)``; ``k`` runs along the body axis.
        spacing: voxel size in mm along ``i, j, k`` (anisotropic is fine).
        nodules: ``None`` for a random set of 4-8 nodules mixing kinds, locations and sizes, or a
            list of :class:`NoduleSpec` / dicts with ``kind``, ``location``, ``diameter_mm``.
        orientation: three-letter axis code, ``"LPS"`` (default) or ``"RAS"`` or any other
            combination of L/R, P/A, S/I in that axis order; arrays are flipped consistently so
            the world-mm content is the same.
        noise_hu: standard deviation of the CT noise (HU); 0 for a noise-free image.
        noise_smoothing: in-plane Gaussian sigma (voxels) of the scanner blur and noise texture.
        body_fraction: body width as a fraction of the smaller field-of-view dimension; the
            whole anatomy (lungs included) scales with it.
        max_tries: placement attempts per nodule before giving up.

    Raises:
        ValueError: bad arguments, or an explicit nodule that cannot be placed.
    """
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes of at least 8, got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers, got {spacing}")
    flips = orientation_flips(orientation)
    specs = None if nodules is None else [as_spec(n) for n in nodules]

    ss = np.random.SeedSequence(int(seed))
    rng_anat, rng_vessel, rng_nod, rng_noise, rng_tex = (np.random.default_rng(s) for s in ss.spawn(5))

    canvas = Canvas(shape, spacing, body_fraction, rng_anat)
    dense_pass(canvas, rng_tex)
    draw_ribs(canvas)
    draw_airways(canvas, rng_vessel)
    draw_vessels(canvas, rng_vessel)
    redraw_airway_lumen(canvas)
    if specs is None:
        placed = place_random_nodules(canvas, rng_nod, max_tries)
    else:
        placed = [place_nodule(canvas, rng_nod, spec, max_tries, required=True) for spec in specs]
    ct16 = finish_ct(canvas, rng_noise, noise_hu, noise_smoothing)
    return assemble(canvas, ct16, placed, flips, orientation.upper(), int(seed), noise_hu)
