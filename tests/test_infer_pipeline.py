"""End-to-end inference on chest phantoms: nodules found, masks on the exact input grid (LPS, RAS,
DICOM), report and CSV contents, not-a-chest warnings, CLI. No trained model is needed: a tiny
random DynUNet checkpoint is saved for loading, and where detection is checked an intensity
"oracle" network (nodule logit rising above -300 HU) replaces it so the geometry is what is tested.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from model_factory import HUOracle

from medseg.cli import main as cli_main
from medseg.errors import InputError
from medseg.inference.lung_mask import compute_lung_mask
from medseg.inference.pipeline import InferenceSettings, Segmenter, infer
from medseg.io import read_volume, write_volume
from medseg.models import BUNDLED_MODEL, build_network, save_checkpoint
from medseg.plan import NetworkPlan, Plan

NODULES = [
    {"kind": "solid", "location": "isolated", "diameter_mm": 12.0},
    {"kind": "solid", "location": "isolated", "diameter_mm": 8.0},
    {"kind": "solid", "location": "isolated", "diameter_mm": 6.0},
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny windows on a shared 2-core box
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    plan = Plan(
        spacing=(1.75, 1.75, 2.0),  # differs from the phantoms' grid: resampling both ways is exercised
        patch_size=(32, 32, 16),
        network=NetworkPlan(filters=[8, 16, 32], kernel_size=[[3, 3, 3]] * 3,
                            strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], deep_supr_num=1),
    )
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", build_network(plan.network), plan)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from medseg.data.phantom import make_phantom

    out = tmp_path_factory.mktemp("phantoms")
    ph = make_phantom(seed=3, shape=(120, 120, 52), spacing=(1.5, 1.5, 2.5), nodules=NODULES, noise_hu=10.0,
                      body_fraction=0.75)  # air around the body: the lung box is smaller than the scan
    assert ph.ct.orientation == "LPS"
    # the same scan stored RAS: i and j flipped, geometry adjusted so world content is identical
    flip = np.diag([-1.0, -1.0, 1.0])
    corner = ph.ct.index_to_world(np.array([ph.ct.shape[0] - 1, ph.ct.shape[1] - 1, 0]))
    ras = replace(ph.ct, array=np.ascontiguousarray(ph.ct.array[::-1, ::-1]), origin=tuple(corner),
                  direction=ph.ct.direction @ flip)
    assert ras.orientation == "RAS"
    ras_ph = replace(ph, ct=ras, nodules=replace(ras, array=np.ascontiguousarray(ph.nodules.array[::-1, ::-1])),
                     lungs=replace(ras, array=np.ascontiguousarray(ph.lungs.array[::-1, ::-1])))
    made = {}
    for orient, p in (("LPS", ph), ("RAS", ras_ph)):
        path = out / f"chest_{orient.lower()}.nii.gz"
        write_volume(p.ct, path)
        made[orient] = (path, p)
    return made


def oracle_segmenter(ckpt: Path, **kw) -> Segmenter:
    # the coarse mass pass is tested on its own (test_masses.py): an HU threshold has no notion of scale
    kw.setdefault("masses", False)
    seg = Segmenter(InferenceSettings(model=str(ckpt), device="cpu", quiet=True, **kw))
    seg.predictor.model = HUOracle()
    return seg


def test_candidate_features_index_the_labels_they_describe(tiny_ckpt, phantoms) -> None:
    """Segmentation.features lie on the grid of Segmentation.labels (postprocessing measures them
    in the lung box; a box-relative bbox or centroid would point users at the wrong voxels)."""
    seg = oracle_segmenter(tiny_ckpt).segment(read_volume(phantoms["LPS"][0]))
    fine = [f for f in seg.features if f.get("kind") != "mass"]
    assert fine and seg.stats["windows_run"] < seg.stats["windows_total"], "the lung box must not start at 0"
    for f in fine:
        box = tuple(slice(a, b) for a, b in f["bbox"])
        inside = np.argwhere(seg.labels[box] == f["label"]) + [b.start for b in box]
        assert len(inside) == f["voxels"] == int((seg.labels == f["label"]).sum())
        np.testing.assert_allclose(inside.mean(0), f["centroid_ijk"], atol=1e-6)


@pytest.mark.parametrize("orient", ["LPS", "RAS"])
def test_every_nodule_found_on_the_input_grid(tiny_ckpt, phantoms, tmp_path, orient) -> None:
    path, ph = phantoms[orient]
    res = oracle_segmenter(tiny_ckpt).run(path, tmp_path)
    assert res.case == f"chest_{orient.lower()}"
    src = read_volume(path)
    masks = {k: read_volume(res.outputs[k]) for k in ("nodules", "lungs")}
    for vol in masks.values():
        assert vol.same_grid(src), "outputs must lie on the exact input grid"
    labels = masks["nodules"].array
    # the written lung mask is the computed one, whole, with the found lesions inside
    np.testing.assert_array_equal(masks["lungs"].array > 0, (compute_lung_mask(src).mask > 0) | (labels > 0))
    assert labels.dtype == np.uint16 and labels.max() == res.n_nodules
    truth = ph.nodules.array
    report = json.loads(Path(res.outputs["report"]).read_text())
    for spec in ph.info["nodules"]:
        t = truth == spec["id"]
        hit = np.unique(labels[t])
        hit = hit[hit > 0]
        assert len(hit) == 1, f"nodule {spec} not found (or split)"
        found = next(n for n in report["nodules"] if n["id"] == int(hit[0]))
        assert np.linalg.norm(np.subtract(found["centre_lps_mm"], spec["centre_lps_mm"])) < 2.0
        err = abs(found["volume_mm3"] - spec["volume_mm3"]) / spec["volume_mm3"]
        print(f"{orient} nodule {spec['diameter_mm']:.1f} mm: volume error {100 * err:.1f} %")
        # the oracle thresholds at -300 HU after two resamplings and the truth counts rim voxels
        assert err < (0.4 if spec["diameter_mm"] >= 7.5 else 0.75)
        assert found["type"] == "solid"
        assert found["centre_ras_mm"][:2] == pytest.approx([-c for c in found["centre_lps_mm"][:2]])
    with open(res.outputs["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == res.n_nodules == report["n_nodules"]
    assert {"centre_lps_x_mm", "volume_mm3", "longest_diameter_mm", "type"} <= set(rows[0])
    assert report["software"]["version"] and report["timings_s"]["total_s"] > 0
    assert report["model"]["windows"]["windows_run"] <= report["model"]["windows"]["windows_total"]
    assert Path(res.outputs["preview"]).stat().st_size > 1000
    assert not list(tmp_path.glob(".*partial*")), "no temporary files left behind"


def test_ras_and_lps_inputs_give_the_same_probabilities_in_world(tiny_ckpt, phantoms) -> None:
    seg = oracle_segmenter(tiny_ckpt)
    p_lps = seg.segment(read_volume(phantoms["LPS"][0]), keep_probabilities=True).probability_full()
    p_ras = seg.segment(read_volume(phantoms["RAS"][0]), keep_probabilities=True).probability_full()
    assert p_lps.dtype == np.float32 and p_lps.shape == phantoms["LPS"][1].ct.shape
    # the RAS phantom is the LPS one with i and j flipped
    np.testing.assert_allclose(p_ras[::-1, ::-1, :], p_lps, atol=1e-5)
    lungs = phantoms["LPS"][1].lungs.array > 0
    assert (p_lps[lungs] > 0.5).sum() > 50  # nodules and vessels inside the lung were seen


def monai_whole_volume(seg: Segmenter, vol) -> np.ndarray:
    """What a plain-MONAI user does: whole volume to the plan grid, sliding_window_inference, back."""
    import nibabel as nib
    from monai.inferers import sliding_window_inference

    from medseg.inference.predictor import interp3, model_grid_size
    from medseg.transforms import normalise_ct

    pr = seg.predictor
    geo = pr.model_geometry(vol, None)
    arr = nib.orientations.apply_orientation(vol.array, geo["fwd"])
    sizes = [model_grid_size(n, s, t) for n, s, t in
             zip(arr.shape, [vol.spacing[int(a)] for a in geo["perm"]], pr.plan.spacing)]
    img = interp3(normalise_ct(arr, pr.plan.intensity), [np.arange(m) * sc for m, sc in zip(sizes, geo["scale"])])
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(img)[None, None], pr.window, 2, pr.model,
                                          overlap=pr.overlap, mode="gaussian")
    prob = torch.softmax(logits, 1)[0, 1].numpy()
    back = interp3(prob, [np.arange(n) / sc for n, sc in zip(arr.shape, geo["scale"])])
    return nib.orientations.apply_orientation(back, geo["back"])


def test_roi_pipeline_equals_whole_volume_monai_inside_lung(tiny_ckpt, phantoms) -> None:
    seg = Segmenter(model=str(tiny_ckpt), device="cpu", quiet=True, precision="fp32")  # the real (random) network
    vol = read_volume(phantoms["LPS"][0])
    mask = seg.lung_mask(vol).mask
    roi = seg.predictor.predict_roi(vol, mask)
    assert roi.stats["windows_run"] < seg.predictor.count_windows(vol, None), "windows were skipped"
    ours = roi.full(vol.shape)
    ref = monai_whole_volume(seg, vol)
    lung = mask > 0
    np.testing.assert_allclose(ours[lung], ref[lung], atol=1e-5)
    outside = np.ones(vol.shape, bool)
    outside[roi.box] = False
    assert not ours[outside].any(), "nothing outside the lung box is computed"


def test_dicom_series_input_writes_seg_on_grid(tiny_ckpt, phantoms, tmp_path) -> None:
    from dicom_factory import write_ct_series

    ph = phantoms["LPS"][1]
    folder = tmp_path / "series"
    write_ct_series(folder, ph.ct.array.astype(np.float64), spacing=ph.ct.spacing, origin=ph.ct.origin)
    res = oracle_segmenter(tiny_ckpt).run(folder, tmp_path / "out")
    src = read_volume(folder)
    assert read_volume(res.outputs["nodules"]).same_grid(src)
    assert res.n_nodules >= len(NODULES)
    import highdicom as hd

    seg = hd.seg.segread(res.outputs["dicom_seg"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.meta["series_uid"]


def test_not_ct_and_no_lung_are_reported_as_such_never_as_zero_nodules(tiny_ckpt, shared_data, tmp_path) -> None:
    results = infer(
        [shared_data / "real_mr" / "abdomen_mr_3mm.nii.gz", shared_data / "real_ct" / "abdomen_dicom_jpeg2000"],
        tmp_path, model=str(tiny_ckpt), device="cpu", quiet=True,
    )
    mr, abdomen = results
    assert any("CT" in w for w in mr.warnings)
    assert any("no plausible lung" in w for w in abdomen.warnings)
    for r in results:
        assert r.status == "no_lung" and r.n_nodules is None
        assert "nodules" not in r.outputs and "csv" not in r.outputs, "no nodule file that reads as 0 nodules"
        report = json.loads(Path(r.outputs["report"]).read_text())
        assert report["status"] == "no_lung" and report["n_nodules"] is None
        assert report["warnings"] == r.warnings


def test_no_lung_cli_exit_code_and_body_search_fallback(tiny_ckpt, shared_data, tmp_path, capsys) -> None:
    from medseg.cli.infer import EXIT_NO_LUNG

    scan = str(shared_data / "real_ct" / "abdomen_dicom_jpeg2000")
    base = ["infer", scan, "--model", str(tiny_ckpt), "--device", "cpu", "--no-preview", "--quiet"]
    assert cli_main([*base, "-o", str(tmp_path / "a")]) == EXIT_NO_LUNG
    assert "NO PLAUSIBLE LUNG" in capsys.readouterr().out  # said even with --quiet
    assert cli_main([*base, "-o", str(tmp_path / "b"), "--on-no-lung", "search_body"]) == 0
    report = json.loads((tmp_path / "b" / "abdomen_dicom_jpeg2000_report.json").read_text())
    assert report["status"] == "body_search" and report["n_nodules"] is not None
    assert any("whole image was searched" in w for w in report["warnings"])


def test_lung_bases_only_runs_and_warns(tiny_ckpt, shared_data, tmp_path) -> None:
    seg = oracle_segmenter(tiny_ckpt)
    res = seg.run(shared_data / "real_ct" / "torso_ct_3mm.nii.gz", tmp_path)
    assert any("mL of lung" in w for w in res.warnings)
    assert read_volume(res.outputs["lungs"]).array.sum() > 0


def test_missing_bundled_model_is_a_clear_input_error(monkeypatch, tmp_path) -> None:
    import medseg.models.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "BUNDLED_MODEL", tmp_path / "not_installed.pt")
    with pytest.raises(InputError, match="bundled model"):
        Segmenter(device="cpu")


def test_bundled_model_loads_safely_with_its_plan_and_split() -> None:
    """The shipped weights: weights_only load, plan rebuilds the network, held-out patients recorded."""
    import torch

    from medseg.models import load_model

    assert BUNDLED_MODEL.is_file(), "medseg/models/weights/lung_nodule.pt must ship with the package"
    assert BUNDLED_MODEL.stat().st_size < 50e6
    payload = torch.load(BUNDLED_MODEL, weights_only=True)
    assert payload["split"]["val_patients"] and payload["plan"]["orientation"] == "RAS"
    model, plan, _ = load_model(None)
    with torch.inference_mode():
        out = model(torch.zeros(1, 1, *plan.patch_size))
    assert out.shape == (1, 2, *plan.patch_size)


def test_cli_infer_crop_mode(tiny_ckpt, phantoms, tmp_path, capsys) -> None:
    ph = phantoms["LPS"][1]
    crop = replace(ph.ct, array=np.ascontiguousarray(ph.ct.array[40:80, 40:80, 20:40]),
                   origin=tuple(ph.ct.index_to_world(np.array([40, 40, 20]))))
    path = write_volume(crop, tmp_path / "crop.nii.gz")
    out = tmp_path / "cli"
    rc = cli_main(["infer", str(path), "-o", str(out), "--model", str(tiny_ckpt), "--device", "cpu",
                   "--save-probabilities", "--no-crf", "--crop-mode"])
    assert rc == 0
    for suffix in ("_nodules.nii.gz", "_lungs.nii.gz", "_report.json", "_nodules.csv", "_preview.png",
                   "_probabilities.nii.gz"):
        assert (out / f"crop{suffix}").is_file(), suffix
    prob = read_volume(out / "crop_probabilities.nii.gz")
    assert prob.same_grid(crop) and prob.array.min() > 0  # crop mode: the whole image was run
    assert "crop:" in capsys.readouterr().out
    assert cli_main(["infer", str(path), "-o", str(out), "--model", str(tmp_path / "nope.pt")]) == 2


def test_cli_overlap_and_min_confidence_options_are_used_and_checked(tiny_ckpt, phantoms, tmp_path) -> None:
    import json

    ph = phantoms["LPS"][1]
    crop = replace(ph.ct, array=np.ascontiguousarray(ph.ct.array[40:72, 40:72, 20:36]),
                   origin=tuple(ph.ct.index_to_world(np.array([40, 40, 20]))))
    path = write_volume(crop, tmp_path / "crop.nii.gz")
    base = ["infer", str(path), "-o", str(tmp_path / "o"), "--model", str(tiny_ckpt), "--device", "cpu",
            "--no-crf", "--crop-mode", "--quiet", "--no-preview"]
    assert cli_main([*base, "--overlap", "0.25"]) == 0
    report = json.loads((tmp_path / "o" / "crop_report.json").read_text())
    assert report["model"]["overlap"] == 0.25
    with pytest.raises(SystemExit) as exc:
        cli_main([*base, "--overlap", "1.0"])
    assert exc.value.code == 2
    assert cli_main([*base, "--min-confidence", "0.7"]) == 0
    report = json.loads((tmp_path / "o" / "crop_report.json").read_text())
    assert report["settings"]["min_confidence"] == 0.7
    with pytest.raises(SystemExit) as exc:
        cli_main([*base, "--min-confidence", "1.5"])
    assert exc.value.code == 2


def test_min_confidence_from_the_plan_cuts_whole_scan_candidates_only(tiny_ckpt, phantoms, tmp_path) -> None:
    path, ph = phantoms["LPS"]
    seg = oracle_segmenter(tiny_ckpt, preview=False)
    seg.plan.inference.min_confidence = 0.999  # above every oracle component's mean probability
    assert seg.postprocess_settings(whole_scan=True).min_confidence == 0.999
    res = seg.run(path, tmp_path / "cut")
    assert res.n_nodules == 0 and json.loads(Path(res.outputs["report"]).read_text())["model"]["min_confidence"] == 0.999
    keep = oracle_segmenter(tiny_ckpt, preview=False, min_confidence=0.0)  # the user's override wins
    keep.plan.inference.min_confidence = 0.999
    assert keep.run(path, tmp_path / "all").n_nodules >= len(ph.info["nodules"])
    crop = oracle_segmenter(tiny_ckpt, lung_mask=False)
    crop.plan.inference.min_confidence = 0.999
    assert crop.postprocess_settings(whole_scan=False).min_confidence == 0.0  # a crop holds its nodule


def test_seeds_segment_the_nodule_at_each_point_in_any_convention(tiny_ckpt, phantoms, tmp_path) -> None:
    from medseg.inference.seeds import read_seeds, segment_seeds

    path, ph = phantoms["RAS"]  # an RAS array: voxel indices and world conventions all differ
    vol = read_volume(path)
    truth = ph.nodules.array
    specs = ph.info["nodules"]
    far = np.array(specs[0]["centre_lps_mm"]) + np.array([0.0, 0.0, 200.0])  # outside the scan
    rows = {"lps": ["id,x_lps_mm,y_lps_mm,z_lps_mm"], "ras": ["x_ras_mm,y_ras_mm,z_ras_mm"], "ijk": ["i,j,k"]}
    for n, s in enumerate(specs):
        lps = np.array(s["centre_lps_mm"])
        rows["lps"].append(f"n{n},{lps[0]},{lps[1]},{lps[2]}")
        rows["ras"].append(f"{-lps[0]},{-lps[1]},{lps[2]}")
        rows["ijk"].append(",".join(str(v) for v in np.round(vol.world_to_index(lps), 2)))
    rows["lps"].append(f"outside,{far[0]},{far[1]},{far[2]}")
    seg = oracle_segmenter(tiny_ckpt)
    for kind, lines in rows.items():
        csv_path = tmp_path / f"{kind}.csv"
        csv_path.write_text("\n".join(lines) + "\n")
        seeds = read_seeds(csv_path, vol)
        labels, results = segment_seeds(seg, vol, seeds)
        assert [r.found for r in results[: len(specs)]] == [True] * len(specs), kind
        for r, s in zip(results, specs):
            t = truth == s["id"]
            got = labels == r.label
            assert (got & t).sum() > 0.5 * got.sum(), f"{kind}: the seed's own nodule, nothing else"
            if s["diameter_mm"] >= 7.5:  # the oracle thresholds after two resamplings: small ones shrink
                assert 2 * (got & t).sum() / (got.sum() + t.sum()) > 0.6, kind
        if kind == "lps":
            assert results[0].seed.id == "n0" and not results[-1].found and results[-1].label is None


def test_seeds_csv_without_a_named_convention_is_refused(tmp_path, phantoms) -> None:
    from medseg.inference.seeds import read_seeds

    bad = tmp_path / "bad.csv"
    bad.write_text("x,y,z\n1,2,3\n")
    with pytest.raises(InputError, match="x_lps_mm"):
        read_seeds(bad, read_volume(phantoms["LPS"][0]))


def test_cli_seeds_report_every_point_found_or_not(tiny_ckpt, phantoms, tmp_path, capsys) -> None:
    """``medseg infer --seeds`` through the real network (random weights: what is found does not matter,
    that every point is reported and the files agree does)."""
    path, ph = phantoms["LPS"]
    spec = ph.info["nodules"][0]
    lps = spec["centre_lps_mm"]
    seeds = tmp_path / "points.csv"
    seeds.write_text(f"id,x_lps_mm,y_lps_mm,z_lps_mm\nA,{lps[0]},{lps[1]},{lps[2]}\nB,9999,0,0\n")
    out = tmp_path / "o"
    assert cli_main(["infer", str(path), "-o", str(out), "--model", str(tiny_ckpt), "--device", "cpu",
                     "--seeds", str(seeds), "--no-preview"]) == 0
    assert "seed points have a nodule" in capsys.readouterr().out
    name = Path(path).name.replace(".nii.gz", "")
    with open(out / f"{name}_seeds.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["seed_id"] for r in rows] == ["A", "B"] and rows[1]["found"] == "False"
    report = json.loads((out / f"{name}_report.json").read_text())
    assert [s["seed_id"] for s in report["seeds"]] == ["A", "B"]
    labels = read_volume(out / f"{name}_nodules.nii.gz").array
    assert labels.max() == sum(r["found"] == "True" for r in rows)


def test_medseg_segment_in_memory_from_sitk_and_nibabel_images(tiny_ckpt, phantoms, tmp_path) -> None:
    """The image-in, masks-out API: a SimpleITK or nibabel image gives the same masks as a Volume,
    on the input grid, and nothing is written until write_outputs."""
    import nibabel as nib
    import SimpleITK as sitk

    import medseg

    path, _ = phantoms["LPS"]
    vol = read_volume(path)
    before = set(tmp_path.iterdir())
    a = medseg.segment(vol, model=str(tiny_ckpt), device="cpu")
    b = medseg.segment(sitk.ReadImage(str(path)), model=str(tiny_ckpt), device="cpu")
    c = medseg.segment(nib.load(str(path)), model=str(tiny_ckpt), device="cpu")
    assert set(tmp_path.iterdir()) == before, "segment writes nothing"
    assert a.labels.shape == vol.shape and a.lungs.shape == vol.shape and a.probability is None
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.labels, c.labels)
    assert [n["id"] for n in a.nodules] == list(range(1, int(a.labels.max()) + 1))
    out = medseg.write_outputs(a, tmp_path / "o", "case")
    assert read_volume(out["nodules"]).same_grid(vol)


def test_real_detection_rescores_cached_candidates_as_the_pipeline_scores_them(tiny_ckpt, phantoms, tmp_path) -> None:
    """benchmarks/real_detection.py caches candidates with their features, so a refitted FP stage
    re-scores them without the network: its scores must equal the pipeline run with that stage,
    even when the cache was made under a classifier that did not need the Hessian shape measures."""
    import importlib.util
    import sys

    from medseg.postprocess.candidates import DEFAULT_FEATURES, CandidateClassifier

    path_ = Path(__file__).resolve().parents[1] / "benchmarks" / "real_detection.py"
    spec = importlib.util.spec_from_file_location("real_detection", path_)
    rd = importlib.util.module_from_spec(spec)
    sys.modules["real_detection"] = rd
    spec.loader.exec_module(rd)
    path, ph = phantoms["LPS"]
    truth = write_volume(ph.nodules, tmp_path / "truth.nii.gz")
    rng = np.random.default_rng(0)

    def classifier(names):
        return CandidateClassifier(features=list(names), mean=[0.0] * len(names), scale=[1.0] * len(names),
                                   coef=rng.normal(size=len(names)).tolist(), intercept=0.2)

    plain, shaped = classifier(DEFAULT_FEATURES[:7]), classifier(DEFAULT_FEATURES)
    assert {"prob_blobness", "hu_blobness"} <= set(shaped.features) - set(plain.features)
    runs = {}
    for name, clf in (("plain", plain), ("shaped", shaped)):
        seg = oracle_segmenter(tiny_ckpt, min_confidence=0.0, preview=False, crf=False)
        seg.plan.inference.candidate_classifier = clf.to_dict()
        rd.run_scan(seg, "scan", "hybrid", path, truth, [], {}, tmp_path / name)
        runs[name] = rd.run_scan(None, "scan", "hybrid", path, truth, [], {}, tmp_path / name)  # from the cache
    with_shape = [c.confidence for c in runs["shaped"].candidates]
    assert len(with_shape) > 3 and len(set(with_shape)) > 1
    assert rd.rescore([runs["plain"]], shaped) == len(with_shape)
    np.testing.assert_allclose([c.confidence for c in runs["plain"].candidates], with_shape, atol=1e-4)
    rd.rescore([runs["plain"]], None)  # no classifier: the mean probability, as the pipeline
    assert [c.confidence for c in runs["plain"].candidates] == [c.features["mean_probability"]
                                                                 for c in runs["plain"].candidates]
