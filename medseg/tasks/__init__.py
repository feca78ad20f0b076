"""Task definitions: labels, intensity handling and training defaults, as YAML data.

``load_task("lung_nodule")`` reads the bundled task; ``load_task("path/to/task.yaml")`` reads a
user's copy. A user task is merged over the bundled defaults it does not mention, so a small file
that changes only what differs is enough.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from medseg.errors import InputError

TASK_DIR = Path(__file__).resolve().parent
DEFAULT_TASK = "lung_nodule"


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


def load_task(name_or_path: str | os.PathLike[str] = DEFAULT_TASK) -> dict[str, Any]:
    """The task settings as a plain dict.

    ``name_or_path`` is a bundled task name (``lung_nodule``) or a YAML file; a file's settings
    override the bundled ``lung_nodule`` defaults (or those of the task named by its ``base`` key).
    """
    text = str(name_or_path)
    bundled = TASK_DIR / f"{text}.yaml"
    if not text.lower().endswith((".yaml", ".yml")) and bundled.is_file():
        task = _read_yaml(bundled)
        task.setdefault("name", text)
        return task
    path = Path(text)
    if not path.is_file():
        raise InputError(path, f"no such task file or bundled task (bundled: {', '.join(available_tasks())})")
    user = _read_yaml(path)
    base_name = str(user.pop("base", DEFAULT_TASK))
    if not (TASK_DIR / f"{base_name}.yaml").is_file():
        raise InputError(path, f"unknown base task {base_name!r}")
    task = _merge(_read_yaml(TASK_DIR / f"{base_name}.yaml"), user)
    if "labels" in user:  # a label map is replaced as a whole, never merged with the base task's
        task["labels"] = copy.deepcopy(user["labels"])
    task.setdefault("name", path.stem)
    if not isinstance(task.get("labels"), dict) or 0 not in task["labels"].values():
        raise InputError(path, "task 'labels' must map names to integers and include background 0")
    return task


def device_value(value: Any, device_type: str) -> Any:
    """Resolve a ``{cpu: x, cuda: y}`` setting for a device type; plain values pass through."""
    if isinstance(value, dict) and ("cpu" in value or "cuda" in value):
        return value.get(device_type, value.get("cpu"))
    return value
