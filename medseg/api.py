"""The Python API: ``segment()``, ``write_outputs()``, ``infer()``, ``train()``, ``train_fp()``,
``evaluate()``, ``batch()``, ``measure()``, ``export()``, ``load_task()``.

The CLI is a thin layer over these. Each one is implemented in its stage's package and imported
on first use, so ``import medseg`` stays fast and a stage's heavy dependencies load only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> "module:attribute" implementing it
_IMPLEMENTATIONS = {
    "train": "medseg.training.run:train",
    "train_fp": "medseg.training.fp_reduction:train_fp_reduction",
    "infer": "medseg.inference.pipeline:infer",
    "segment": "medseg.inference.pipeline:segment",
    "write_outputs": "medseg.report.outputs:write_outputs",
    "evaluate": "medseg.evaluation.api:evaluate",
    "batch": "medseg.batch.runner:run_batch",
    "measure": "medseg.report.measure_mask:measure_mask",
    "export": "medseg.models.export:export_checkpoint",
    "load_task": "medseg.tasks:load_task",
}

__all__ = sorted(_IMPLEMENTATIONS)


def __getattr__(name: str) -> Any:
    try:
        module, attr = _IMPLEMENTATIONS[name].split(":")
    except KeyError:
        raise AttributeError(f"module 'medseg.api' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), attr)
