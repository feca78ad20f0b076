"""One command line: -i/--input and -o/--output in every command (old spellings as hidden aliases),
infer's options on batch reaching the Segmenter its workers build, infer going on past a bad scan,
--device cuda:N, --format, --lung-mask."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from model_factory import chest_hu

from medseg.cli import build_parser, main
from medseg.errors import InputError
from medseg.io import Volume, read_volume, write_volume
from medseg.models import build_network, save_checkpoint
from medseg.plan import NetworkPlan, Plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: commands and whether they write an output
COMMANDS = {"infer": True, "train": True, "train-fp": True, "evaluate": False, "measure": True, "batch": True,
            "info": False, "export": True}
FAST = ["--device", "cpu", "--no-crf", "--quiet"]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    plan = Plan(spacing=(2.0, 2.0, 2.0), patch_size=(16, 16, 16),
                network=NetworkPlan(filters=[8, 16, 32], kernel_size=[[3, 3, 3]] * 3,
                                    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], deep_supervision=False))
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", build_network(plan.network), plan)


def chest(seed: int = 0, shape=(32, 32, 16)) -> np.ndarray:
    return chest_hu(seed, shape)


def crop(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    return write_volume(Volume(rng.normal(-700, 100, (20, 20, 12)).astype(np.int16), (1.0, 1.0, 1.5),
                               modality="CT"), path)


def test_every_command_takes_i_input_and_o_output_with_old_spellings_hidden():
    parsers = subparsers()
    assert set(parsers) == set(COMMANDS)
    for name, p in parsers.items():
        options = {s for a in p._actions for s in a.option_strings}
        assert {"-i", "--input"} <= options, name
        assert ({"-o", "--output"} <= options) == COMMANDS[name], name
        shown = p.format_help()
        assert "--out-dir" not in shown and "--out " not in shown and "--out," not in shown, name
    parse = build_parser().parse_args
    assert parse(["infer", "a.nii.gz", "--out-dir", "X"]).output == "X"  # old spelling, still works
    assert parse(["batch", "in", "--out-dir", "X"]).output == "X"
    assert parse(["train-fp", "--out", "m.pt"]).output == "m.pt"
    assert parse(["train", "-i", "d1", "--data", "d2", "-o", "run"]).data == ["d1", "d2"]


def test_positional_and_i_inputs_combine(tmp_path, capsys):
    a, b, c = (crop(tmp_path / f"{n}.nii.gz", i) for i, n in enumerate("abc"))
    assert main(["info", str(a), "-i", str(b), "--input", str(c), "--json"]) == 0
    assert [json.loads(line)["path"] for line in capsys.readouterr().out.splitlines()] == [str(a), str(b), str(c)]
    assert main(["info"]) == 2 and "no input" in capsys.readouterr().err
    parse = build_parser().parse_args
    assert parse(["measure", "-i", "scan.nrrd", "mask.nrrd"]).ordered_inputs == ["scan.nrrd", "mask.nrrd"]
    assert parse(["infer", "-i", "b", "a", "c", "-o", "o"]).ordered_inputs == ["b", "a", "c"]  # as given
    assert main(["evaluate", "-i", str(a)]) == 2  # needs PRED and GT
    assert main(["batch", str(tmp_path), "-i", str(tmp_path), "-o", str(tmp_path / "o")]) == 2  # one INPUT


def test_device_cuda_n_is_accepted_and_checked():
    from medseg.models.device import resolve_device

    parse = build_parser().parse_args
    for cmd in (["infer", "a", "-o", "o"], ["batch", "a", "-o", "o"], ["train-fp", "-o", "m.pt"]):
        assert parse([*cmd, "--device", "cuda:1"]).device == "cuda:1"
        with pytest.raises(SystemExit) as exc:
            parse([*cmd, "--device", "gpu1"])
        assert exc.value.code == 2
    with pytest.raises(InputError, match="cuda:N"):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            resolve_device("cuda:1")
    else:
        with pytest.raises(InputError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_infer_keeps_going_past_a_bad_scan_then_exits_2_with_one_summary_line(tmp_path, tiny_model, capsys):
    good1, good2 = crop(tmp_path / "good1.nii.gz", 1), crop(tmp_path / "good2.nii.gz", 2)
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(good1.read_bytes()[:200])
    out = tmp_path / "out"
    rc = main(["infer", str(good1), str(bad), "-i", str(good2), "-o", str(out), "--model", str(tiny_model),
               "--crop-mode", "--no-preview", "--format", "nrrd", "--save-probabilities", *FAST])
    assert rc == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err[-1].startswith("medseg: error: 1 of 3 scans failed: truncated (") and "truncated or corrupt" in err[-1]
    assert "Traceback" not in captured.err
    for name, src in (("good1", good1), ("good2", good2)):  # the scan after the bad one was done too
        for kind in ("nodules", "lungs", "probabilities"):
            written = read_volume(out / f"{name}_{kind}.nrrd")
            assert written.same_grid(read_volume(src)), kind
        assert not (out / f"{name}_nodules.nii.gz").exists()
        report = json.loads((out / f"{name}_report.json").read_text())
        assert report["settings"]["output_format"] == "nrrd"
    assert not list(out.glob("truncated*")) and not list(out.glob(".*partial*"))
    # one bad scan alone: its own error, as before
    assert main(["infer", str(bad), "-o", str(out), "--model", str(tiny_model), "--crop-mode", *FAST]) == 2


def test_batch_takes_the_infer_options_and_they_reach_the_segmenter(tmp_path, tiny_model):
    crop(tmp_path / "in" / "c1.nii.gz")
    out = tmp_path / "out"
    rc = main(["batch", "-i", str(tmp_path / "in"), "-o", str(out), "--workers", "0", "--model", str(tiny_model),
               "--device", "cpu", "--min-confidence", "0.3", "--overlap", "0.25", "--no-crf", "--crop-mode",
               "--save-probabilities", "--no-preview", "--precision", "fp32", "--on-no-lung", "search_body",
               "--no-masses", "--format", "mha", "--quiet"])
    assert rc == 0
    expected = {"min_confidence": 0.3, "overlap": 0.25, "crf": False, "lung_mask": False, "save_probabilities": True,
                "preview": False, "precision": "fp32", "on_no_lung": "search_body", "masses": False,
                "output_format": "mha", "device": "cpu"}
    recorded = yaml.safe_load((out / "pipeline.yaml").read_text())["inference"]
    assert {k: recorded[k] for k in expected} == expected
    report = json.loads((out / "c1" / "c1_report.json").read_text())
    assert {k: report["settings"][k] for k in expected} == expected  # the Segmenter the worker built
    assert report["model"]["overlap"] == 0.25 and report["model"]["precision"] == "fp32"
    assert report["model"]["mass_scale"] == 0.0  # --no-masses
    names = sorted(p.name for p in (out / "c1").iterdir())
    assert names == ["c1_lungs.mha", "c1_nodules.csv", "c1_nodules.mha", "c1_probabilities.mha", "c1_report.json"]


def test_batch_pipeline_file_refuses_a_setting_every_case_would_fail_on(tmp_path):
    from medseg.batch.pipeline import load_pipeline

    for bad in ("on_no_lung: maybe", "output_format: png", "device: gpu", "precision: fp8"):
        with pytest.raises(InputError, match=bad.split(":")[0]):
            load_pipeline({"inference": yaml.safe_load(bad)})


def test_lung_mask_option_replaces_the_computed_mask(tmp_path, tiny_model, capsys):
    from medseg.inference.lung_mask import compute_lung_mask

    scan = write_volume(Volume(chest(), (4.0, 4.0, 4.0), modality="CT"), tmp_path / "chest.nii.gz")
    vol = read_volume(scan)
    given = np.zeros(vol.shape, np.uint8)
    given[4:18, 8:24, 2:14] = 1  # 2688 voxels of 64 mm3: 172 mL, not the computed mask
    assert not np.array_equal(given, compute_lung_mask(vol).mask)
    mask_path = write_volume(vol.with_array(given), tmp_path / "given_lungs.nii.gz")
    out = tmp_path / "out"
    base = ["--model", str(tiny_model), "--no-preview", *FAST]
    assert main(["infer", str(scan), "--lung-mask", str(mask_path), "-o", str(out), *base]) == 0
    labels = read_volume(out / "chest_nodules.nii.gz").array
    np.testing.assert_array_equal(read_volume(out / "chest_lungs.nii.gz").array, given | (labels > 0))
    report = json.loads((out / "chest_report.json").read_text())
    assert report["lung_volume_ml"] == pytest.approx(given.sum() * 64 / 1000, abs=0.05)

    small = write_volume(vol.with_array(given * 0), tmp_path / "empty_lungs.nii.gz")
    assert main(["infer", str(scan), "--lung-mask", str(small), "-o", str(tmp_path / "o2"), *base]) == 3
    assert "given lung mask" in json.loads((tmp_path / "o2" / "chest_report.json").read_text())["warnings"][-2]

    other = write_volume(Volume(given, (4.0, 4.0, 5.0)), tmp_path / "other_grid.nii.gz")
    capsys.readouterr()
    assert main(["infer", str(scan), "--lung-mask", str(other), "-o", str(tmp_path / "o3"), *base]) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "grid" in err
    assert main(["infer", str(scan), str(scan), "--lung-mask", str(mask_path), "-o", str(tmp_path / "o4"),
                 *base]) == 2  # one mask per scan
    assert main(["infer", str(scan), "--lung-mask", str(mask_path), "--crop-mode", "-o", str(tmp_path / "o5"),
                 *base]) == 2


def test_segment_takes_a_lung_mask_array_and_checks_its_shape(tiny_model):
    from medseg.inference.pipeline import Segmenter

    vol = Volume(chest(), (4.0, 4.0, 4.0), modality="CT")
    seg = Segmenter(model=str(tiny_model), device="cpu", quiet=True, crf=False)
    given = np.zeros(vol.shape, bool)
    given[4:18, 8:24, 2:14] = True
    result = seg.segment(vol, lung_mask=given)
    assert result.status == "ok" and np.array_equal(result.lungs, given.astype(np.uint8))
    assert result.lung_volume_ml == pytest.approx(given.sum() * 64 / 1000)
    with pytest.raises(InputError, match="shape"):
        seg.segment(vol, lung_mask=given[:, :, :8])


def test_pipeline_keys_mirror_the_inference_settings():
    import dataclasses

    from medseg.batch.pipeline import INFERENCE_KEYS, default_pipeline
    from medseg.cli._common import INFERENCE_OPTIONS
    from medseg.inference.pipeline import InferenceSettings

    fields = {f.name for f in dataclasses.fields(InferenceSettings)} - {"quiet"}
    assert set(INFERENCE_KEYS) == fields and set(INFERENCE_OPTIONS) <= fields
    defaults = default_pipeline()["inference"]
    assert defaults == {k: v for k, v in dataclasses.asdict(InferenceSettings()).items() if k in fields}
    repo_file = Path(__file__).resolve().parents[1] / "pipelines" / "lung_nodule_batch.yaml"
    assert yaml.safe_load(repo_file.read_text())["inference"] == defaults  # documents every key


def write_lungs(case, work_dir, settings):
    """A per-case function without a model (module level, so it can be pickled)."""
    vol = read_volume(case.input)
    write_volume(vol.with_array((vol.array > -500).astype(np.uint8)), work_dir / f"{case.case_id}_lungs.nii.gz")
    return {"n_nodules": 0, "largest_diameter_mm": None, "nodules": [], "warnings": []}


def test_resume_of_a_run_recorded_before_the_new_settings_existed(tmp_path):
    from medseg.batch.runner import run_batch

    crop(tmp_path / "in" / "a.nii.gz")
    out = tmp_path / "out"
    assert run_batch(tmp_path / "in", out, workers=0, case_fn=write_lungs, quiet=True).n_done == 1
    run_json = out / ".medseg_batch" / "run.json"
    recorded = json.loads(run_json.read_text())
    for key in ("on_no_lung", "masses", "precision", "output_format"):  # what an older medseg recorded
        del recorded["settings"][key]
    run_json.write_text(json.dumps(recorded))
    again = run_batch(tmp_path / "in", out, workers=0, case_fn=write_lungs, quiet=True)
    assert again.n_skipped == 1  # the new settings at their defaults: the same run, resumed
    with pytest.raises(InputError, match="output_format"):
        run_batch(tmp_path / "in", out, workers=0, case_fn=write_lungs, quiet=True, output_format="nrrd")


def test_only_atomic_single_file_image_formats_are_written(tmp_path):
    vol = Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4), (0.5, 0.7, 2.0), origin=(1.0, 2.0, 3.0))
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        back = read_volume(write_volume(vol, tmp_path / f"v{suffix}"))
        assert back.same_grid(vol) and np.array_equal(back.array, vol.array)
    with pytest.raises(ValueError, match="cannot write"):
        write_volume(vol, tmp_path / "v.mhd")  # its separate .raw could not be renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mha", "v.nii.gz", "v.nrrd"]
