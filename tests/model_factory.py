"""A tiny 3-level DynUNet plan for tests that need a real network fast."""

from __future__ import annotations

from medseg.plan import NetworkPlan, Plan


def tiny_plan(window: tuple[int, int, int] = (16, 16, 16)) -> Plan:
    """2 mm spacing, filters 8-16-32, deep supervision on (eval mode returns the main head)."""
    return Plan(spacing=(2.0, 2.0, 2.0), patch_size=window,
                network=NetworkPlan(filters=[8, 16, 32], kernel_size=[[3, 3, 3]] * 3,
                                    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], deep_supervision=True,
                                    deep_supr_num=1))
