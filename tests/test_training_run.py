"""End-to-end training on a tiny synthetic dataset: outputs, checkpoints, loss, exact resume (helper B)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.errors import InputError

TINY = dict(patch_size=[16, 16, 16], filters=[8, 16, 32], batch_size=2, num_workers=0, folds=2,
            val_cases=0, tensorboard=False, quiet=True, log_every=0)


def make_spheres(root: Path, n: int = 4) -> Path:
    """``n`` LIDC-named 24^3 crops (2 per patient) with a bright sphere; LPS like the real crops."""
    g = np.indices((24, 24, 24))
    for i in range(n):
        c = (10 + i % 3, 12, 11 + i % 2)
        m = (sum((g[a] - c[a]) ** 2 for a in range(3)) <= 16).astype(np.uint8)
        rng = np.random.default_rng(i)
        img = np.where(m > 0, 50, -850).astype(np.int16) + rng.normal(0, 20, m.shape).astype(np.int16)
        aff = np.diag([-0.9, -0.9, 1.2, 1.0])
        name = f"LIDC-IDRI-{1 + i // 2:04d}_R_{i}.nii.gz"
        for sub, arr in (("image", img), ("mask", m)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, aff), str(root / sub / name))
    return root


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_spheres(tmp_path_factory.mktemp("spheres"))


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_cli_train_writes_run_folder_and_loadable_checkpoints(data, tmp_path, capsys):
    from medseg.cli import main
    from medseg.models import build_network, load_model

    run = tmp_path / "run"
    rc = main(["train", "--data", str(data), "-o", str(run), "--max-epochs", "4", "--steps-per-epoch", "3",
               "--patch-size", "16,16,16", "--filters", "8,16,32", "--batch-size", "2", "--num-workers", "0",
               "--folds", "2", "--lr", "0.01", "--device", "cpu", "--quiet"])
    assert rc == 0
    assert "best.pt" in capsys.readouterr().out
    for name in ("splits.json", "plan.json", "fingerprint.json", "task.json", "metrics.csv", "best.pt", "last.pt"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*partial*"))
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert int(rows[-1]["step"]) == 12
    assert 0.0 <= float(rows[-1]["val_dice"]) <= 1.0
    # a sphere in air is trivially learnable: the loss must fall
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])

    payload = torch.load(run / "last.pt", weights_only=True)
    assert payload["training"]["step"] == 12 and payload["plan"]["patch_size"] == [16, 16, 16]
    best = torch.load(run / "best.pt", weights_only=True)
    assert "training" not in best and best["task"]["name"] == "lung_nodule"
    # the checkpoint names its held-out patients, exactly the validation side of splits.json
    splits = json.loads((run / "splits.json").read_text())
    assert best["split"]["fold"] == 0 and best["split"]["val_patients"]
    assert set(best["split"]["val_patients"]) <= set(json.dumps(splits).replace('"', " ").split())
    model, plan, _ = load_model(run / "best.pt")
    assert plan.network.filters == [8, 16, 32]
    ref = build_network(plan.network)
    ref.load_state_dict(best["state_dict"])
    ref.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    # the same run folder is not silently overwritten
    with pytest.raises(InputError, match="resume"):
        from medseg.training.run import train

        train("lung_nodule", [data], run, max_epochs=1, device="cpu", **TINY)


class _Killed(Exception):
    pass


def _kill_after(epoch_to_die: int):
    def cb(epoch, row):
        if epoch == epoch_to_die:
            raise _Killed
        return False

    return cb


def test_resume_continues_exactly(data, tmp_path):
    from medseg.training.run import train

    full, part = tmp_path / "full", tmp_path / "part"
    train("lung_nodule", [data], full, max_epochs=2, device="cpu", steps_per_epoch=2, **TINY)
    with pytest.raises(_Killed):
        train("lung_nodule", [data], part, max_epochs=2, device="cpu", steps_per_epoch=2,
              epoch_callback=_kill_after(0), **TINY)
    assert torch.load(part / "last.pt", weights_only=True)["training"]["step"] == 2
    train("lung_nodule", [data], part, max_epochs=2, device="cpu", resume=True, steps_per_epoch=2, **TINY)
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(part / "last.pt", weights_only=True)
    assert b["training"]["step"] == 4
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert [r["train_loss"] for r in _rows(full)] == [r["train_loss"] for r in _rows(part)]
    with pytest.raises(InputError, match="no last.pt"):
        train("lung_nodule", [data], tmp_path / "new", max_epochs=1, device="cpu", resume=True, **TINY)


def test_init_weights_fine_tunes_from_a_trained_model_with_its_plan(data, tmp_path, caplog):
    import logging
    import shutil

    from medseg.training.run import train

    src, ft = tmp_path / "src", tmp_path / "ft"
    train("lung_nodule", [data], src, max_epochs=4, device="cpu", steps_per_epoch=3, lr=0.01, **TINY)
    ft.mkdir()
    shutil.copy(src / "splits.json", ft / "splits.json")  # keep the source's held-out patients
    other = {**TINY, "filters": [4, 8, 16], "patch_size": None}  # filters ignored: the model's plan wins
    with caplog.at_level(logging.WARNING, logger="medseg.training"):
        train("lung_nodule", [data], ft, max_epochs=1, device="cpu", steps_per_epoch=3, lr=0.01,
              init_weights=str(src / "best.pt"), **other)
    assert json.loads((ft / "plan.json").read_text()) == json.loads((src / "plan.json").read_text())
    assert not (ft / "fingerprint.json").exists()
    assert "no longer hold" not in caplog.text
    # started from the trained weights: the first epoch's loss is the trained model's, not a fresh one's
    assert float(_rows(ft)[0]["train_loss"]) < float(_rows(src)[0]["train_loss"])

    # a candidate classifier fitted for the old weights is not carried to the new ones
    import torch

    from medseg.models import load_checkpoint_dict
    from medseg.postprocess import CandidateClassifier
    from medseg.postprocess.candidates import DEFAULT_FEATURES

    payload = load_checkpoint_dict(src / "best.pt")
    n = len(DEFAULT_FEATURES)
    clf = CandidateClassifier(mean=[0.0] * n, scale=[1.0] * n, coef=[1.0] * n)
    payload["plan"]["inference"].update(candidate_classifier=clf.to_dict(), min_confidence=0.7)
    torch.save(payload, tmp_path / "with_fp.pt")
    ft2 = tmp_path / "ft2"
    ft2.mkdir()
    shutil.copy(src / "splits.json", ft2 / "splits.json")
    train("lung_nodule", [data], ft2, max_epochs=1, device="cpu", steps_per_epoch=1,
          init_weights=str(tmp_path / "with_fp.pt"), **TINY)
    inference = json.loads((ft2 / "plan.json").read_text())["inference"]
    assert inference["candidate_classifier"] is None and inference["min_confidence"] == 0.0

    # a split that puts the source's validation patients into training is flagged
    leak = tmp_path / "leak"
    leak.mkdir()
    splits = json.loads((src / "splits.json").read_text())
    splits["folds"] = [{"train": f["val"], "val": f["train"]} for f in splits["folds"]]  # swapped sides
    (leak / "splits.json").write_text(json.dumps(splits))
    with caplog.at_level(logging.WARNING, logger="medseg.training"):
        train("lung_nodule", [data], leak, max_epochs=1, device="cpu", steps_per_epoch=1,
              init_weights=str(src / "best.pt"), **TINY)
    assert "no longer hold" in caplog.text


def test_fine_tune_trains_on_a_larger_patch_that_fits_the_network(data, tmp_path):
    """A fully convolutional model can be fine-tuned on larger patches (for larger inference
    windows); a patch the network's strides do not divide is refused before training starts."""
    import shutil

    from medseg.training.run import train

    src = tmp_path / "src"
    train("lung_nodule", [data], src, max_epochs=1, device="cpu", steps_per_epoch=1, **TINY)
    strides = np.prod(json.loads((src / "plan.json").read_text())["network"]["strides"], axis=0)
    bigger = [int(s) * 6 for s in strides]
    for name in ("ft", "bad"):
        (tmp_path / name).mkdir()
        shutil.copy(src / "splits.json", tmp_path / name / "splits.json")
    train("lung_nodule", [data], tmp_path / "ft", max_epochs=1, device="cpu", steps_per_epoch=1,
          init_weights=str(src / "best.pt"), **{**TINY, "patch_size": bigger})
    plan = json.loads((tmp_path / "ft" / "plan.json").read_text())
    assert plan["patch_size"] == bigger
    assert torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["plan"]["patch_size"] == bigger
    with pytest.raises(InputError, match="does not fit this network"):
        train("lung_nodule", [data], tmp_path / "bad", max_epochs=1, device="cpu", steps_per_epoch=1,
              init_weights=str(src / "best.pt"), **{**TINY, "patch_size": [b + 1 for b in bigger]})


def test_validation_dice_is_the_dice_of_the_shipped_path(data, tmp_path, capsys):
    """The Dice training prints for its best epoch equals benchmarks/lidc_accuracy.py's Dice of the
    saved checkpoint on the same held-out crops: both run ``Segmenter.segment`` on each crop's grid."""
    import importlib.util

    from medseg.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "-o", str(run), "--max-epochs", "3", "--steps-per-epoch", "4",
                 "--patch-size", "16,16,16", "--filters", "8,16,32", "--batch-size", "2", "--num-workers", "0",
                 "--folds", "2", "--lr", "0.01", "--device", "cpu", "--quiet"]) == 0
    rows = _rows(run)
    best = max(rows, key=lambda r: float(r["val_dice"]))
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "lidc_accuracy.py"
    spec = importlib.util.spec_from_file_location("lidc_accuracy", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    capsys.readouterr()
    assert bench.main(["--data", str(data), "--model", str(run / "best.pt"), "--held-out-only", "--device", "cpu",
                       "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["held_out"]["cases"] >= 1
    assert abs(result["held_out"]["dice_mean"] - float(best["val_dice"])) < 0.005


def test_fine_tune_can_switch_a_model_to_batch_norm(data, tmp_path):
    """``--norm batch`` with ``--init-weights``: the convolutions are the source's, the plan says
    batch, and the saved model holds the learnt running statistics."""
    import shutil

    from medseg.models import load_checkpoint_dict, load_model
    from medseg.training.run import train

    src, ft = tmp_path / "src", tmp_path / "ft"
    train("lung_nodule", [data], src, max_epochs=1, device="cpu", steps_per_epoch=2, **TINY)
    ft.mkdir()
    shutil.copy(src / "splits.json", ft / "splits.json")
    train("lung_nodule", [data], ft, max_epochs=1, device="cpu", steps_per_epoch=2, lr=1e-9,
          init_weights=str(src / "best.pt"), norm_name="batch", **TINY)
    assert json.loads((ft / "plan.json").read_text())["network"]["norm_name"] == "batch"
    before, after = load_checkpoint_dict(src / "last.pt")["state_dict"], load_checkpoint_dict(ft / "last.pt")["state_dict"]
    conv = "input_block.conv1.conv.weight"
    assert torch.allclose(before[conv], after[conv], atol=1e-6)  # lr ~0: the source's convolutions
    stats = [v for k, v in after.items() if k.endswith("running_var")]
    assert stats and not all(torch.all(v == 1) for v in stats)  # running statistics were learnt
    model, plan, _ = load_model(ft / "last.pt", device="cpu")
    assert plan.network.norm_name == "batch"
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())
