"""Batch runs end to end with the real Segmenter on a tiny random network: failures recorded and the
batch goes on, inputs untouched, no patient identifiers leak, resume, Dask, manifests, kill -9."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from dicom_factory import write_ct_series

from medseg.batch.runner import run_batch
from medseg.io import Volume, read_volume, write_mask, write_volume

REPO = Path(__file__).resolve().parents[1]
SECRETS = ("Doe", "Jane", "SECRET123")
#: voxel size of the test chests: their lungs then hold ~200 mL, a plausible (partial) lung
CHEST_SPACING = (4.0, 4.0, 4.0)


def chest(seed: int, shape=(32, 32, 16)) -> np.ndarray:
    """Chest-like HU: body, two lungs, one small solid nodule (sizes relative to ``shape``)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    hu = np.full(shape, -1000.0)
    hu[x**2 + (y / 0.8) ** 2 < 0.9] = 40  # body
    for cx in (-0.45, 0.45):
        hu[((x - cx) / 0.35) ** 2 + (y / 0.55) ** 2 + (z / 0.9) ** 2 < 1] = -850  # lungs
    c = (rng.choice([-0.45, 0.45]), rng.uniform(-0.2, 0.2), rng.uniform(-0.3, 0.3))
    hu[((x - c[0]) * shape[0]) ** 2 + ((y - c[1]) * shape[1]) ** 2 + ((z - c[2]) * shape[2]) ** 2 < 16] = 30
    return (hu + rng.normal(0, 15, shape)).astype(np.int16)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    pytest.importorskip("medseg.inference.pipeline", reason="needs the inference pipeline")
    import torch

    from medseg.models import build_network, save_checkpoint
    from medseg.plan import NetworkPlan, Plan

    torch.manual_seed(0)
    plan = Plan(spacing=(1.5, 1.5, 2.0), patch_size=(32, 32, 16),
                network=NetworkPlan(filters=[8, 16, 32], kernel_size=[[3, 3, 3]] * 3,
                                    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], deep_supervision=False))
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", build_network(plan.network), plan)


def make_inputs(root: Path, n_good: int = 2) -> dict[str, str]:
    """Good NIfTI scans, a good DICOM series carrying patient identifiers, a truncated NIfTI and an
    empty DICOM folder. Returns {case_id: expected status}."""
    expected = {}
    for n in range(n_good):
        sub = root / ("nested" if n % 2 else "") / f"scan{n}.nii.gz"
        write_volume(Volume(chest(n), spacing=CHEST_SPACING), sub)
        expected[("nested__" if n % 2 else "") + f"scan{n}"] = "done"
    write_ct_series(root / "dicom" / "series_a", chest(7), spacing=CHEST_SPACING,
                    patient_name="Doe^Jane", patient_id="SECRET123")
    expected["dicom__series_a"] = "done"
    good = root / "bad" / "truncated.nii.gz"
    write_volume(Volume(chest(9), spacing=CHEST_SPACING), good)
    good.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    expected["bad__truncated"] = "failed"
    (root / "empty_series").mkdir()
    (root / "empty_series" / "IM0001.dcm").write_bytes(b"")
    expected["empty_series"] = "failed"
    return expected


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def all_text_and_names(out: Path) -> str:
    """Every output path plus the text of every CSV/JSON/YAML output."""
    parts = []
    for p in out.rglob("*"):
        parts.append(str(p.relative_to(out)))
        if p.suffix in (".csv", ".json", ".yaml"):
            parts.append(p.read_text())
    return "\n".join(parts)


def test_good_done_bad_failed_inputs_untouched_no_identifiers(tmp_path, tiny_model, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    expected = make_inputs(inp)
    before = hashes(inp)
    caplog.set_level("DEBUG")
    summary = run_batch(inp, out, workers=0, model=str(tiny_model), device="cpu", quiet=True)

    assert hashes(inp) == before  # inputs byte-identical
    rows = {r["case_id"]: r for r in read_csv(out / "summary.csv")}
    assert {k: r["status"] for k, r in rows.items()} == expected
    assert not summary.ok and summary.n_failed == 2 and summary.n_done == len(expected) - 2
    assert "truncated or corrupt" in rows["bad__truncated"]["error"]
    assert "no readable DICOM image" in rows["empty_series"]["error"]
    for cid, status in expected.items():
        assert (out / cid).is_dir() == (status == "done")
        if status == "done":
            assert (out / cid / f"{cid}_nodules.nii.gz").is_file() and rows[cid]["error"] == ""
            assert int(rows[cid]["n_nodules"]) == len(
                [r for r in read_csv(out / "nodules.csv") if r["case_id"] == cid])
            assert read_volume(out / cid / f"{cid}_nodules.nii.gz").shape == read_volume(
                rows[cid]["input"]).shape
    text = all_text_and_names(out) + caplog.text
    for secret in SECRETS:
        assert secret.lower() not in text.lower()
    assert not list(out.rglob("*.partial-*"))


def test_resume_skips_finished_cases_and_redoes_changed_inputs(tmp_path, tiny_model):
    inp, out = tmp_path / "in", tmp_path / "out"
    for n in range(3):
        write_volume(Volume(chest(n), spacing=CHEST_SPACING), inp / f"s{n}.nii.gz")
    first = run_batch(inp, out, workers=0, model=str(tiny_model), device="cpu", quiet=True)
    assert first.ok and first.n_skipped == 0
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*_nodules.nii.gz")}
    # a leftover of a killed writer and a changed input
    (out / "s0" / ".s0_lungs.partial-123-abcd.nii.gz").write_bytes(b"half")
    write_volume(Volume(chest(5), spacing=CHEST_SPACING), inp / "s2.nii.gz")
    second = run_batch(inp, out, workers=0, model=str(tiny_model), device="cpu", quiet=True)
    assert second.ok and second.n_skipped == 2
    changed = {p for p, t in mtimes.items() if p.stat().st_mtime_ns != t}
    assert changed == {out / "s2" / "s2_nodules.nii.gz"}
    assert [r["case_id"] for r in read_csv(out / "summary.csv")] == ["s0", "s1", "s2"]
    assert not list(out.rglob("*.partial-*"))
    # different result-changing settings must not be mixed into the same folder
    from medseg.errors import InputError

    with pytest.raises(InputError, match="different settings"):
        run_batch(inp, out, workers=0, model=str(tiny_model), device="cpu", tta=True, quiet=True)


def _comparable(out: Path) -> list[tuple]:
    return [(r["case_id"], r["status"], r["n_nodules"], r["largest_diameter_mm"], r["error"])
            for r in read_csv(out / "summary.csv")]


def test_dask_local_cluster_matches_local_worker_process(tmp_path, tiny_model):
    pytest.importorskip("distributed")
    inp = tmp_path / "in"
    make_inputs(inp, n_good=2)
    kw = {"model": str(tiny_model), "device": "cpu", "quiet": True}
    # a light LocalCluster (a worker thread in this process), reached like --scheduler tcp://...
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        address = cluster.scheduler_address
        dask = run_batch(inp, tmp_path / "dask", scheduler=address, **kw)
    local = run_batch(inp, tmp_path / "local", workers=1, **kw)  # the default: a worker process
    assert _comparable(tmp_path / "dask") == _comparable(tmp_path / "local")
    assert dask.n_failed == local.n_failed == 2 and dask.n_done == local.n_done == 3
    assert yaml.safe_load((tmp_path / "dask" / "pipeline.yaml").read_text())["execution"]["scheduler"] == address


def test_manifest_input_with_case_ids(tmp_path, tiny_model):
    data = tmp_path / "data"
    write_volume(Volume(chest(1), spacing=CHEST_SPACING), data / "a.nii.gz")
    write_ct_series(data / "ct", chest(2), spacing=CHEST_SPACING)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("path,case_id\ndata/a.nii.gz,P1\ndata/ct,P2\ndata/gone.nii.gz,P3\n")
    summary = run_batch(manifest, tmp_path / "out", workers=0, model=str(tiny_model), device="cpu", quiet=True)
    rows = {r["case_id"]: r["status"] for r in read_csv(tmp_path / "out" / "summary.csv")}
    assert rows == {"P1": "done", "P2": "done", "P3": "failed"}
    assert summary.n_failed == 1 and (tmp_path / "out" / "P2" / "P2_nodules.nii.gz").is_file()


# -- worker death: a fake per-case function (module level so spawned workers can import it) --------
def crash_on_marked(case, work_dir, settings):
    if "crash" in case.case_id:
        os._exit(3)  # a segfault/OOM kill: the process vanishes without a Python exception
    vol = read_volume(case.input)
    write_mask((vol.array > -300).astype(np.uint8), vol, work_dir / f"{case.case_id}_nodules.nii.gz")
    return {"n_nodules": 1, "largest_diameter_mm": 4.0, "warnings": [],
            "nodules": [{"label": 1, "diameter_mm": 4.0, "centre_lps_mm": [1.0, 2.0, 3.0]}]}


def test_dead_worker_fails_only_its_case(tmp_path):
    inp = tmp_path / "in"
    for name in ("a", "b_crash", "c"):
        write_volume(Volume(chest(0, (16, 16, 8)), spacing=(1.0, 1.0, 1.0)), inp / f"{name}.nii.gz")
    summary = run_batch(inp, tmp_path / "out", workers=1, case_fn=crash_on_marked, quiet=True)
    status = {r["case_id"]: (r["status"], r["error"]) for r in summary.records}
    assert status["a"] == ("done", "") and status["c"] == ("done", "")
    assert status["b_crash"][0] == "failed" and "worker process died" in status["b_crash"][1]
    nodules = read_csv(tmp_path / "out" / "nodules.csv")
    assert [(r["case_id"], r["centre_lps_mm_z"]) for r in nodules] == [("a", "3.0"), ("c", "3.0")]


# -- kill -9 mid-batch, then the same command again -------------------------------------------------
def test_kill_9_then_rerun_every_case_done_exactly_once(tmp_path, tiny_model):
    inp, out = tmp_path / "in", tmp_path / "out"
    n = 6
    for i in range(n):
        write_volume(Volume(chest(i), spacing=CHEST_SPACING), inp / f"c{i}.nii.gz")
    before = hashes(inp)
    cmd = [sys.executable, "-m", "medseg", "batch", str(inp), "-o", str(out), "--workers", "1",
           "--model", str(tiny_model), "--device", "cpu", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    state = out / ".medseg_batch"
    deadline = time.monotonic() + 60
    while not list(state.glob("*.done.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the batch and its worker processes, mid-write
    proc.wait()
    done_before = {p.name.removesuffix(".done.json") for p in state.glob("*.done.json")}
    assert 1 <= len(done_before) < n, "the kill should land mid-batch"
    finished = {cid: ((out / cid / f"{cid}_nodules.nii.gz").stat().st_mtime_ns,
                      (state / f"{cid}.done.json").read_text()) for cid in done_before}

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    rows = read_csv(out / "summary.csv")
    assert sorted(r["case_id"] for r in rows) == sorted(f"c{i}" for i in range(n))  # each exactly once
    assert all(r["status"] == "done" for r in rows)
    assert len(list(state.glob("*.done.json"))) == n and not list(state.glob("*.failed.json"))
    for cid, (mtime, marker) in finished.items():  # not recomputed
        assert (out / cid / f"{cid}_nodules.nii.gz").stat().st_mtime_ns == mtime
        assert (state / f"{cid}.done.json").read_text() == marker
    assert not list(out.rglob("*.partial-*"))
    assert not list((state / "work").iterdir())
    assert hashes(inp) == before
    assert json.loads((state / "c0.done.json").read_text())["status"] == "done"


def test_cli_pipeline_file_exit_codes_and_repeat(tmp_path, tiny_model, capsys):
    from medseg.cli import main

    inp, out = tmp_path / "in", tmp_path / "out"
    write_volume(Volume(chest(3), spacing=CHEST_SPACING), inp / "ok.nii.gz")
    pipe = tmp_path / "p.yaml"
    pipe.write_text(f"input: {inp}\noutput: {out}\ninference:\n  model: {tiny_model}\n  device: cpu\n"
                    "  preview: false\nexecution:\n  workers: 3\n")
    assert main(["batch", "--pipeline", str(pipe), "--workers", "0", "--quiet"]) == 0  # flag overrides file
    resolved = yaml.safe_load((out / "pipeline.yaml").read_text())
    assert resolved["execution"]["workers"] == 0 and resolved["inference"]["preview"] is False
    assert not list((out / "ok").glob("*_preview.png"))
    (inp / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    assert main(["batch", "--pipeline", str(out / "pipeline.yaml"), "--quiet"]) == 1  # repeat: one failed
    rows = {r["case_id"]: r["status"] for r in read_csv(out / "summary.csv")}
    assert rows == {"broken": "failed", "ok": "done"}
    assert main(["batch", str(tmp_path / "missing"), "-o", str(out), "--quiet"]) == 2


def test_two_ct_series_sharing_a_folder_are_segmented_separately(tmp_path, tiny_model):
    import medseg.api

    folder = tmp_path / "in" / "study"
    write_ct_series(folder, chest(1), spacing=CHEST_SPACING, series_uid="1.2.826.0.1.1")
    for p in folder.iterdir():
        p.rename(p.with_name("a" + p.name))
    write_ct_series(folder, chest(2, (32, 32, 12)), spacing=CHEST_SPACING, series_uid="1.2.826.0.1.2")
    before = hashes(tmp_path / "in")
    summary = medseg.api.batch(tmp_path / "in", tmp_path / "out", workers=0, model=str(tiny_model),
                               device="cpu", quiet=True)
    assert summary.ok and [r["case_id"] for r in summary.records] == ["study__series1", "study__series2"]
    shapes = [read_volume(tmp_path / "out" / c / f"{c}_nodules.nii.gz").shape
              for c in ("study__series1", "study__series2")]
    assert shapes == [(32, 32, 16), (32, 32, 12)]
    assert hashes(tmp_path / "in") == before and not list((tmp_path / "out" / ".medseg_batch" / "work").iterdir())
