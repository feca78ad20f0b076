"""Network factory: MONAI ``DynUNet`` built from a :class:`~medseg.plan.NetworkPlan`."""

from __future__ import annotations

import torch

from medseg.plan import NetworkPlan


def build_network(net: NetworkPlan) -> torch.nn.Module:
    """A 3D U-Net (MONAI ``DynUNet``) with optional deep supervision and residual blocks.

    In training mode with deep supervision the network returns a tensor stacked along dim 1
    (full-resolution head first); in eval mode it returns the full-resolution logits only.
    """
    from monai.networks.nets import DynUNet

    return DynUNet(
        spatial_dims=3,
        in_channels=net.in_channels,
        out_channels=net.out_channels,
        kernel_size=[list(k) for k in net.kernel_size],
        strides=[list(s) for s in net.strides],
        upsample_kernel_size=[list(s) for s in net.strides[1:]],
        filters=list(net.filters),
        norm_name=net.norm_name,
        deep_supervision=net.deep_supervision,
        deep_supr_num=net.deep_supr_num,
        res_block=net.res_block,
    )
