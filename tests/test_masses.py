"""Masses (30-100 mm): the coarse second pass, its filters, and the real 45 mm mass at the pleura."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.inference.masses import grow_into_tissue, lung_contact, solidity


def ball(shape, centre, radius_mm, spacing) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing))
    return d2 <= radius_mm**2


def test_lung_contact_tells_a_mass_in_the_lung_from_one_beside_it() -> None:
    spacing = (1.0, 1.0, 2.5)
    shape = (80, 80, 40)
    mass = ball(shape, (40, 40, 20), 15, spacing)
    lung_all_round = ~mass
    lung_one_side = np.zeros(shape, bool)
    lung_one_side[:40] = True  # lung on one half-space only: the heart or a mediastinal mass
    lung_one_side &= ~mass
    assert lung_contact(mass, lung_all_round, spacing) > 0.95
    assert 0.3 < lung_contact(mass, lung_one_side, spacing) < 0.7


def test_solidity_of_a_ball_and_of_a_branching_vessel_tree() -> None:
    spacing = (1.0, 1.0, 1.0)
    assert solidity(ball((60, 60, 60), (30, 30, 30), 20, spacing)) > 0.9
    tree = np.zeros((80, 80, 80), bool)
    tree[38:42, 38:42, :] = True  # trunk
    for k in (20, 40, 60):  # branches at right angles
        tree[:, 38:42, k - 2 : k + 2] = True
        tree[38:42, :, k + 5 : k + 9] = True
    assert solidity(tree) < 0.3


def test_growing_into_tissue_stays_in_the_allowed_region_and_in_tissue() -> None:
    spacing = (0.7, 0.7, 5.0)
    shape = (120, 120, 16)
    truth = ball(shape, (60, 60, 8), 22, spacing)
    image = np.where(truth, 40, -850).astype(np.int16)
    image[:, 100:, :] = 40  # chest wall touching the mass, outside the allowed field
    allowed = np.ones(shape, bool)
    allowed[:, 100:, :] = False
    core = ball(shape, (60, 60, 8), 18, spacing)  # the coarse pass rounds the edge off
    grown = grow_into_tissue(core, image, allowed, spacing, 4.0, -300.0)
    assert grown[core].all()
    assert not grown[:, 100:, :].any(), "never grows out of the lung field (the chest wall)"
    assert not grown[image < -300].any(), "only into tissue"
    assert grown.sum() > 1.3 * core.sum() and (grown & truth).sum() / grown.sum() > 0.99


@pytest.mark.slow
def test_real_mass_at_the_pleura_is_found_and_segmented(shared_data) -> None:
    """The bundled network on its coarse grid, over the lung field of the real 5 mm chest CT."""
    import torch

    from medseg.inference.lung_mask import compute_lung_mask
    from medseg.inference.masses import find_masses
    from medseg.inference.predictor import Predictor
    from medseg.io import read_volume

    torch.set_num_threads(2)
    ct = read_volume(shared_data / "real_chest" / "chest_ct_5mm_mass.nrrd")
    label = read_volume(shared_data / "real_chest" / "chest_ct_5mm_mass_label.nrrd").array > 0
    predictor = Predictor.from_checkpoint(None, "cpu")
    masses = find_masses(predictor, ct, compute_lung_mask(ct), predictor.plan.inference)
    assert len(masses) == 1, "the mass, and not the heart, aorta or diaphragm domes that light up too"
    m = np.zeros(ct.shape, bool)
    m[masses[0].box] = masses[0].mask
    d = 2 * (m & label).sum() / (m.sum() + label.sum())
    print(f"real mass: Dice {d:.3f}, {m.sum() * ct.voxel_volume_mm3 / 1000:.1f} mL "
          f"(label {label.sum() * ct.voxel_volume_mm3 / 1000:.1f} mL), lung contact {masses[0].lung_contact:.2f}")
    assert d >= 0.7
