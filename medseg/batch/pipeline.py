"""Pipeline files: the steps and settings of a batch run as YAML, so a run can be repeated.

A pipeline has four sections besides its name::

    pipeline: lung_nodule_batch
    version: 1
    steps: [discover, segment, summarise]
    input: /data/export            # folder or CSV manifest (the CLI's INPUT overrides)
    output: /results/run1          # the CLI's -o overrides
    inference: {model: null, device: auto, tta: false, ...}   # medseg.inference.InferenceSettings
    execution: {workers: 2, scheduler: null, cluster: null}

``execution.cluster`` starts a Dask cluster instead of local processes: ``{type: local, ...}``
(``distributed.LocalCluster`` keyword arguments) or ``{type: slurm|pbs|sge|lsf, jobs: 4, ...}``
(``dask_jobqueue`` cluster keyword arguments, ``jobs`` = how many batch jobs to request).
Unknown keys are rejected so a typo never silently changes a run. Relative paths are taken
relative to the current directory. Each batch writes the resolved pipeline to
``OUT/pipeline.yaml``; ``medseg batch --pipeline OUT/pipeline.yaml`` repeats it.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from medseg.errors import InputError

STEPS = ["discover", "segment", "summarise"]
#: InferenceSettings fields a pipeline may set (mirrors medseg.inference.pipeline.InferenceSettings).
INFERENCE_KEYS = ("model", "device", "tta", "overlap", "window", "min_confidence", "save_probabilities", "lung_mask", "crf",
                  "dicom_seg", "preview", "on_no_lung", "masses", "coarse_features", "precision", "runtime",
                  "output_format")
EXECUTION_KEYS = ("workers", "scheduler", "cluster")
TOP_KEYS = ("pipeline", "version", "description", "steps", "input", "output", "inference", "execution")
CLUSTER_TYPES = ("local", "slurm", "pbs", "sge", "lsf", "htcondor", "moab", "oar")


def default_pipeline() -> dict[str, Any]:
    """The pipeline a bare ``medseg batch INPUT -o OUT`` runs."""
    return {
        "pipeline": "lung_nodule_batch",
        "version": 1,
        "steps": list(STEPS),
        "input": None,
        "output": None,
        "inference": {"model": None, "device": "auto", "tta": False, "overlap": None, "window": None, "min_confidence": None,
                      "save_probabilities": False, "lung_mask": True, "crf": None, "dicom_seg": True,
                      "preview": True, "on_no_lung": "fail", "masses": True, "coarse_features": False, "precision": None,
                      "runtime": "torch", "output_format": "nii.gz"},
        "execution": {"workers": None, "scheduler": None, "cluster": None},
    }


def load_pipeline(source: str | os.PathLike[str] | dict[str, Any] | None) -> dict[str, Any]:
    """Read and validate a pipeline (YAML file or dict), filled in with the defaults."""
    merged = default_pipeline()
    if source is None:
        return merged
    if isinstance(source, dict):
        data, where = copy.deepcopy(source), "pipeline"
    else:
        import yaml

        where = Path(source)
        try:
            data = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(source, f"cannot read pipeline file ({exc.strerror or exc})") from exc
        except yaml.YAMLError as exc:
            raise InputError(source, f"pipeline file is not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(where, "a pipeline must be a YAML mapping")
    _only(data, TOP_KEYS, where, "pipeline")
    if data.get("steps") is not None and list(data["steps"]) != STEPS:
        raise InputError(where, f"steps must be {STEPS} (the batch pipeline's fixed order)")
    for section, keys in (("inference", INFERENCE_KEYS), ("execution", EXECUTION_KEYS)):
        values = data.pop(section, None) or {}
        if not isinstance(values, dict):
            raise InputError(where, f"'{section}' must be a mapping")
        _only(values, keys, where, section)
        merged[section].update(values)
    merged.update({k: v for k, v in data.items() if v is not None})
    check_inference(merged["inference"], where)
    cluster = merged["execution"].get("cluster")
    if cluster is not None:
        if not isinstance(cluster, dict) or cluster.get("type") not in CLUSTER_TYPES:
            raise InputError(where, f"execution.cluster needs a 'type' among {', '.join(CLUSTER_TYPES)}")
        if merged["execution"].get("scheduler"):
            raise InputError(where, "set execution.scheduler or execution.cluster, not both")
    return merged


#: allowed values of the inference settings that take one of a few words (None: the model's)
CHOICES = {"on_no_lung": ("fail", "search_body"), "precision": (None, "auto", "fp32", "bf16", "fp16"),
           "runtime": ("torch", "onnxruntime", "openvino")}


def check_inference(values: dict[str, Any], where: Any) -> None:
    """Refuse a setting that every case would fail on (checked once, before any worker starts)."""
    import re

    from medseg.io.writers import OUTPUT_FORMATS

    choices = {**CHOICES, "output_format": OUTPUT_FORMATS}
    for key, allowed in choices.items():
        if values.get(key) not in allowed:
            shown = ", ".join("null" if a is None else str(a) for a in allowed)
            raise InputError(where, f"inference.{key} must be one of {shown}, got {values.get(key)!r}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(values.get("device"))):
        raise InputError(where, f"inference.device must be auto, cpu, cuda or cuda:N, got {values.get('device')!r}")


def dump_pipeline(pipeline: dict[str, Any]) -> str:
    """YAML text of a resolved pipeline (what ``OUT/pipeline.yaml`` holds)."""
    import yaml

    header = "# Resolved settings of this batch run; repeat it with: medseg batch --pipeline <this file>\n"
    return header + yaml.safe_dump(pipeline, sort_keys=False, default_flow_style=False)


def _only(data: dict[str, Any], allowed: tuple[str, ...], where: Any, section: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise InputError(where, f"unknown {section} key(s) {unknown}; allowed: {', '.join(allowed)}")
