"""Patient-wise k-fold splits, saved as ``splits.json`` so a run can be reproduced exactly."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.datasets import Case
from medseg.errors import InputError
from medseg.io.atomic import write_json_atomic


def make_splits(cases: Sequence[Case], folds: int = 5, seed: int = 12345) -> dict[str, Any]:
    """Assign whole patients (``Case.group``) to ``folds`` folds of about equal case counts.

    Groups are shuffled with ``seed`` and then placed largest first into the currently smallest
    fold, so a patient with many nodules never straddles training and validation.
    """
    if folds < 2:
        raise ValueError("need at least 2 folds")
    groups: dict[str, list[str]] = defaultdict(list)
    for c in cases:
        groups[c.group].append(c.key)
    if len(groups) < folds:
        raise InputError(Path("."), f"only {len(groups)} patients in the data: cannot make {folds} folds")
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    # stable sort by size keeps the shuffled order among equal-sized groups
    shuffled.sort(key=lambda g: -len(groups[g]))
    fold_of: dict[str, int] = {}
    sizes = [0] * folds
    for g in shuffled:
        k = int(np.argmin(sizes))
        fold_of[g] = k
        sizes[k] += len(groups[g])
    result = []
    for k in range(folds):
        val = sorted(key for g, keys in groups.items() if fold_of[g] == k for key in keys)
        train = sorted(key for g, keys in groups.items() if fold_of[g] != k for key in keys)
        result.append({"train": train, "val": val})
    return {
        "seed": seed,
        "folds": result,
        "groups": {c.key: c.group for c in sorted(cases, key=lambda c: c.key)},
    }


def save_splits(splits: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    return write_json_atomic(path, splits)


def load_splits(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(p, f"cannot read splits file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("folds"), list):
        raise InputError(p, "not a medseg splits file (no 'folds' list)")
    return data


def fold_cases(cases: Sequence[Case], splits: dict[str, Any], fold: int) -> tuple[list[Case], list[Case]]:
    """Training and validation cases of ``fold``; every split key must be among ``cases``."""
    folds = splits["folds"]
    if not 0 <= fold < len(folds):
        raise InputError(Path("splits.json"), f"fold {fold} does not exist (folds: 0..{len(folds) - 1})")
    by_key = {c.key: c for c in cases}
    missing = [k for k in folds[fold]["train"] + folds[fold]["val"] if k not in by_key]
    if missing:
        raise InputError(Path("splits.json"), f"{len(missing)} split cases are not in the data, e.g. {missing[0]}")
    return [by_key[k] for k in folds[fold]["train"]], [by_key[k] for k in folds[fold]["val"]]
