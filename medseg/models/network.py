"""Network factory: MONAI ``DynUNet`` built from a :class:`~medseg.plan.NetworkPlan`."""

from __future__ import annotations

import torch

from medseg.plan import NORMS, NetworkPlan

_NORM_STATE = ("running_mean", "running_var", "num_batches_tracked")


def build_network(net: NetworkPlan) -> torch.nn.Module:
    """A 3D U-Net (MONAI ``DynUNet``) with optional deep supervision and residual blocks.

    In training mode with deep supervision the network returns a tensor stacked along dim 1
    (full-resolution head first); in eval mode it returns the full-resolution logits only.
    """
    from monai.networks.nets import DynUNet

    if net.norm_name.lower() not in NORMS:
        raise ValueError(f"unknown normalisation {net.norm_name!r} (known: {', '.join(NORMS)})")
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


def load_weights_across_norms(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load ``state_dict`` into ``model``, which may use another normalisation than its source.

    Convolutions must all match. Normalisation parameters the source lacks keep their identity
    initialisation (an instance norm without affine loaded into batch norm starts as scale 1,
    shift 0, and its running statistics are learnt by the fine-tune); anything else missing or
    left over is an error, so a wrong checkpoint is not half-loaded silently.
    """
    result = model.load_state_dict(state_dict, strict=False)
    modules = dict(model.named_modules())
    norm_only = all(_is_norm_key(modules, k) for k in [*result.missing_keys, *result.unexpected_keys])
    if not norm_only:
        raise ValueError(f"weights do not fit this network: missing {result.missing_keys[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")


def _is_norm_key(modules: dict[str, torch.nn.Module], key: str) -> bool:
    """Whether ``key`` names a normalisation layer's parameter or running statistic."""
    module_name, _, leaf = key.rpartition(".")
    if leaf in _NORM_STATE:
        return True
    module = modules.get(module_name)
    if module is None:  # a key of the source model's norm layer that this model lacks
        return "norm" in module_name.split(".")[-1]
    return isinstance(module, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm))


def receptive_field(model: torch.nn.Module, probe: tuple[int, int, int]) -> tuple[int, int, int]:
    """Input voxels (per axis) that one output voxel at the centre of a ``probe``-sized input
    depends on: the extent of its nonzero input gradient (an axis as long as ``probe`` means at
    least that). A sliding window smaller than this sees zero padding at every output voxel, so
    its output depends on where the window falls, whatever the normalisation."""
    was_training = model.training
    model.eval()
    x = torch.randn(1, 1, *probe, requires_grad=True)
    out = model(x)
    # the gradient of the input only: the model's parameters keep whatever .grad they had
    (grad,) = torch.autograd.grad(out[(0, out.shape[1] - 1, *(p // 2 for p in probe))], x)
    hit = (grad[0, 0] != 0).nonzero()
    model.train(was_training)
    return tuple(int(v) for v in (hit.max(0).values - hit.min(0).values + 1))  # type: ignore[return-value]
