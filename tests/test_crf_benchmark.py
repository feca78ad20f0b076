"""Smoke run of benchmarks/crf_benchmark.py on two real LIDC crops (blurred-GT stand-in)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("pydensecrf.densecrf", reason="CRF refinement needs the optional pydensecrf2")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lidc_nodule_vois"


def test_quick_blurred_gt_run(capsys):
    if not (DATA / "image").is_dir():
        pytest.skip("shared LIDC crops not present beside the checkout")
    spec = importlib.util.spec_from_file_location("crf_benchmark", ROOT / "benchmarks" / "crf_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--data", str(DATA), "--source", "blurred-gt", "--limit", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["crops"] == 2 and out["split"] == "last 20% of patients by id"
    figures = out["crf"]["pydensecrf"]
    assert 0 <= out["dice_without_crf"] <= 1 and 0 <= figures["dice_with_crf"] <= 1
    assert figures["crf_seconds_per_nodule_mean"] > 0
    # its seconds are only comparable with the machine they came from
    assert out["machine"]["cpu_capability"] == str(torch.backends.cpu.get_cpu_capability())
    # the held-out crops are the last patients by id, never the first ones
    patients = sorted({p.name[:14] for p in (DATA / "image").glob("*.nii.gz")})
    assert set(bench.validation_patients(patients, None)[0]) == set(patients[int(0.8 * len(patients)):])
