"""Task definitions: labels, intensity handling and training defaults, as typed data.

``load_task("lung_nodule")`` reads the bundled task; ``load_task("path/to/task.yaml")`` reads a
user's copy. A user task is merged over the bundled task it does not mention, so a small file that
changes only what differs is enough. Either way the result is a :class:`TaskConfig` (see
:mod:`medseg.tasks.config`), checked against its dataclasses: typos and wrong types fail early.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medseg.errors import InputError
from medseg.tasks.config import (
    DEFAULT_TASK,
    AugmentationTask,
    HardNegativeTask,
    InferenceTask,
    IntensityTask,
    LossTask,
    NetworkTask,
    OptimizerTask,
    PatchTask,
    PerDevice,
    SamplingTask,
    SpacingTask,
    TaskConfig,
    TrainingTask,
    ValidationTask,
    setting_choices,
)

__all__ = [
    "DEFAULT_TASK", "TASK_DIR", "AugmentationTask", "HardNegativeTask", "InferenceTask", "IntensityTask",
    "LossTask", "NetworkTask", "OptimizerTask", "PatchTask", "PerDevice", "SamplingTask", "SpacingTask",
    "TaskConfig", "TrainingTask", "ValidationTask", "as_task", "available_tasks", "load_task",
    "setting_choices",
]

TASK_DIR = Path(__file__).resolve().parent


def available_tasks() -> list[str]:
    """Names of the tasks shipped with medseg."""
    return sorted(p.stem for p in TASK_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(path, f"cannot read task file ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise InputError(path, "task file must hold a mapping of settings")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_task(name_or_path: str | os.PathLike[str] = DEFAULT_TASK) -> TaskConfig:
    """The task as a :class:`TaskConfig`.

    ``name_or_path`` is a bundled task name (``lung_nodule``) or a YAML file; a file's settings
    override the bundled ``lung_nodule`` defaults (or those of the task named by its ``base`` key),
    and its ``labels`` replace the base task's as a whole. An unknown key or a wrongly typed value
    raises :class:`~medseg.errors.InputError` naming the file and the setting.
    """
    text = str(name_or_path)
    bundled = TASK_DIR / f"{text}.yaml"
    if not text.lower().endswith((".yaml", ".yml")) and bundled.is_file():
        data = _read_yaml(bundled)
        data.setdefault("name", text)
        return TaskConfig.from_dict(data, bundled)
    path = Path(text)
    if not path.is_file():
        raise InputError(path, f"no such task file or bundled task (bundled: {', '.join(available_tasks())})")
    user = _read_yaml(path)
    base_name = str(user.pop("base", DEFAULT_TASK))
    if not (TASK_DIR / f"{base_name}.yaml").is_file():
        raise InputError(path, f"unknown base task {base_name!r}")
    data = _merge(_read_yaml(TASK_DIR / f"{base_name}.yaml"), user)
    if "labels" in user:  # a label map is replaced as a whole, never merged with the base task's
        data["labels"] = copy.deepcopy(user["labels"])
    data.setdefault("name", path.stem)
    return TaskConfig.from_dict(data, path)


def as_task(task: str | os.PathLike[str] | Mapping[str, Any] | TaskConfig) -> TaskConfig:
    """A :class:`TaskConfig` from a task name, YAML path, task mapping (e.g. a run's ``task.json``)
    or a TaskConfig (returned as is)."""
    if isinstance(task, TaskConfig):
        return task
    if isinstance(task, Mapping):
        return TaskConfig.from_dict(task)
    return load_task(task)
