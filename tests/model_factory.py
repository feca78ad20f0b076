"""Small shared test inputs: a tiny 3-level DynUNet plan, a chest-like HU array and an HU "oracle" network."""

from __future__ import annotations

import numpy as np
import torch

from medseg.plan import NetworkPlan, Plan


def tiny_plan(window: tuple[int, int, int] = (16, 16, 16)) -> Plan:
    """2 mm spacing, filters 8-16-32, deep supervision on (eval mode returns the main head)."""
    return Plan(spacing=(2.0, 2.0, 2.0), patch_size=window,
                network=NetworkPlan(filters=[8, 16, 32], kernel_size=[[3, 3, 3]] * 3,
                                    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], deep_supervision=True,
                                    deep_supr_num=1))


def chest_hu(seed: int = 0, shape: tuple[int, int, int] = (32, 32, 16)) -> np.ndarray:
    """Chest-like HU (int16; 4 mm voxels make ~200 mL of lung): body, two lungs, a small solid nodule."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    hu = np.full(shape, -1000.0)
    hu[x**2 + (y / 0.8) ** 2 < 0.9] = 40
    for cx in (-0.45, 0.45):
        hu[((x - cx) / 0.35) ** 2 + (y / 0.55) ** 2 + (z / 0.9) ** 2 < 1] = -850
    hu[((x + 0.45) * shape[0]) ** 2 + (y * shape[1]) ** 2 + (z * shape[2]) ** 2 < 16] = 30
    return (hu + rng.normal(0, 15, shape)).astype(np.int16)


class HUOracle(torch.nn.Module):
    """Logits [background, nodule] with the nodule logit rising above -300 HU (normalised 0.5): where a
    test checks geometry or plumbing rather than a trained network, dense structures light up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = 8.0 * (x - 0.5)
        return torch.cat([torch.zeros_like(d), d], dim=1)
