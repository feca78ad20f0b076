"""Checkpoints: weights + plan + task, loadable with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, strings, numbers, lists and dicts - no pickled code -
so loading an untrusted file cannot execute anything. It is all inference needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.plan import Plan

FORMAT = "medseg-checkpoint/1"
BUNDLED_DIR = Path(__file__).with_name("weights")
BUNDLED_MODEL = BUNDLED_DIR / "lung_nodule.pt"


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    plan: Plan,
    task: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically. ``extra`` carries training state (optimizer, epoch, RNG...)."""
    module = model.module if hasattr(model, "module") else model
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    payload: dict[str, Any] = {"format": FORMAT, "state_dict": state, "plan": plan.to_dict(), "task": task or {}}
    if extra:
        payload.update(extra)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint_dict(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict, loaded safely (``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "model checkpoint not found")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(p, f"not a loadable medseg checkpoint ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(p, f"not a medseg checkpoint (expected format {FORMAT!r})")
    return payload


def load_model(
    path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Plan, dict[str, Any]]:
    """Load a network in eval mode with its plan. ``path=None`` loads the bundled model."""
    from medseg.models.network import build_network

    if path is None:
        path = BUNDLED_MODEL
        if not path.is_file():
            raise InputError(path, "no bundled model is installed; pass --model CHECKPOINT")
    payload = load_checkpoint_dict(path)
    plan = Plan.from_dict(payload["plan"])
    model = build_network(plan.network)
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return model, plan, payload


def weights_digest(state_dict: dict[str, Any]) -> str:
    """A short SHA-256 of network weights: which network made a cached result, whatever else
    (a refitted candidate classifier, a new cut) its checkpoint's plan carries."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]
