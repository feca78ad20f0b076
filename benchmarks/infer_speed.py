"""Whole-scan inference speed and memory: medseg ``infer`` vs plain MONAI sliding_window_inference.

Same network weights, same chest phantom (512x512x300 at 0.7x0.7x1.25 mm; ``--quick``: a small
one). Each method runs in its own forked child process, so each peak RSS (``ru_maxrss``) is its
own; the parent holds no image while they run.

* medseg: ``Segmenter.run`` - the whole path: read, lung mask, ROI windows at the plan spacing,
  postprocessing, measurements and every output file (masks, report, CSV, preview).
* MONAI: what a plain-MONAI user does with the same model - read, reorient to RAS and resample
  the *whole* volume to the plan spacing (the same resampler medseg uses, so only the inference
  strategy differs), ``sliding_window_inference`` (overlap 0.5, Gaussian) over all of it, softmax,
  resample back, threshold.

``dice_in_lung`` compares the two thresholded probability maps inside medseg's lung mask;
``dice_in_lung_final`` compares medseg's final (post-processed) nodule mask with MONAI's.
Prints figures and ratios, or one JSON line with ``--json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULL = {"shape": (512, 512, 300), "spacing": (0.7, 0.7, 1.25)}
QUICK = {"shape": (160, 160, 48), "spacing": (1.0, 1.0, 1.6)}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _child(target, args, queue) -> None:
    try:
        queue.put(target(*args))
    except BaseException as exc:  # report, do not hang the parent
        queue.put({"error": f"{exc.__class__.__name__}: {exc}"})


def run_forked(target, *args) -> dict:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(target, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def medseg_job(ct_path: str, model: str, out_dir: str, work: str, overlap: float | None, threads: int) -> dict:
    import torch

    from medseg.inference.pipeline import InferenceSettings, Segmenter

    torch.set_num_threads(threads)
    base = _peak_mb()
    seg = Segmenter(InferenceSettings(model=model, device="cpu", quiet=True))
    if overlap is not None:
        seg.predictor.overlap = overlap
    captured = {}
    predict = seg.predictor.predict_roi

    def keep(volume, mask=None, progress=None):
        roi = predict(volume, mask, progress)
        captured["roi"], captured["mask"] = roi, mask
        return roi

    seg.predictor.predict_roi = keep
    t = time.perf_counter()
    res = seg.run(ct_path, out_dir)
    elapsed = time.perf_counter() - t
    peak = _peak_mb()
    roi, lung = captured["roi"], captured["mask"]
    thr = seg.plan.inference.threshold
    prob_mask = np.zeros(lung.shape, bool)
    prob_mask[roi.box] = roi.probability >= thr
    np.save(Path(work) / "medseg_prob_mask.npy", np.packbits(prob_mask))
    np.save(Path(work) / "lung.npy", np.packbits(lung > 0))
    from medseg.io import read_volume

    labels = read_volume(res.outputs["nodules"]).array
    np.save(Path(work) / "medseg_final.npy", np.packbits(labels > 0))
    return {
        "seconds": elapsed,
        "peak_mb": peak,
        "baseline_mb": base,
        "timings": res.timings,
        "windows": {k: roi.stats.get(k) for k in ("windows_total", "windows_run")},
        "window": list(seg.predictor.window),
        "overlap": seg.predictor.overlap,
        "n_nodules": res.n_nodules,
        "shape": list(lung.shape),
    }


def monai_job(ct_path: str, model: str, work: str, threads: int) -> dict:
    import nibabel as nib
    import torch
    from monai.inferers import sliding_window_inference

    from medseg.inference.predictor import Predictor, interp3, model_grid_size
    from medseg.io import read_volume
    from medseg.transforms import normalise_ct

    torch.set_num_threads(threads)
    base = _peak_mb()
    pred = Predictor.from_checkpoint(model, "cpu")
    t = time.perf_counter()
    vol = read_volume(ct_path)
    geo = pred.model_geometry(vol, None)
    arr = nib.orientations.apply_orientation(vol.array, geo["fwd"])
    spacing = [vol.spacing[int(a)] for a in geo["perm"]]
    sizes = [model_grid_size(n, s, t_) for n, s, t_ in zip(arr.shape, spacing, pred.plan.spacing)]
    img = interp3(normalise_ct(arr, pred.plan.intensity), [np.arange(m) * sc for m, sc in zip(sizes, geo["scale"])])
    del arr
    with torch.inference_mode():
        logits = sliding_window_inference(
            torch.from_numpy(img)[None, None], pred.window, pred.sw_batch_size, pred.model,
            overlap=0.5, mode="gaussian",
        )
        prob = torch.softmax(logits, 1)[0, 1].numpy()
    del logits, img
    back = interp3(prob, [np.arange(n) / sc for n, sc in zip(geo["shape"], geo["scale"])])
    back = nib.orientations.apply_orientation(back, geo["back"])
    mask = back >= pred.plan.inference.threshold
    elapsed = time.perf_counter() - t
    peak = _peak_mb()
    np.save(Path(work) / "monai_mask.npy", np.packbits(mask))
    return {"seconds": elapsed, "peak_mb": peak, "baseline_mb": base, "window": list(pred.window)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small phantom (smoke run)")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--model", default=None, help="checkpoint; default: the bundled model")
    ap.add_argument("--random-weights", action="store_true",
                    help="no trained model: seeded random weights with the default plan (masks then "
                         "only show that both paths agree, not that they are good)")
    ap.add_argument("--overlap", type=float, default=None, help="medseg overlap (default: the plan's)")
    ap.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--medseg-only", action="store_true",
                    help="skip the MONAI baseline (it takes most of an hour at full size on 2 cores); "
                         "the MONAI figures are then null")
    args = ap.parse_args(argv)

    from medseg.data.phantom import make_phantom
    from medseg.io import write_volume
    from medseg.models import BUNDLED_MODEL

    size = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as work:
        model = args.model
        if args.random_weights:
            import torch

            from medseg.models import build_network, save_checkpoint
            from medseg.plan import Plan

            torch.manual_seed(args.seed)
            plan = Plan()
            model = str(save_checkpoint(Path(work) / "random.pt", build_network(plan.network), plan))
        elif model is None:
            if not BUNDLED_MODEL.is_file():
                print("no bundled model installed: pass --model CKPT or --random-weights", file=sys.stderr)
                return 2
            model = str(BUNDLED_MODEL)
        t = time.perf_counter()
        ph = make_phantom(seed=args.seed, shape=size["shape"], spacing=size["spacing"])
        ct_path = str(write_volume(ph.ct, Path(work) / "chest.nii.gz"))
        phantom_s = time.perf_counter() - t
        n_truth = len(ph.info["nodules"])
        del ph
        gc.collect()

        med = run_forked(medseg_job, ct_path, model, str(Path(work) / "out"), work, args.overlap, args.threads)
        shape = tuple(med["shape"])
        n = int(np.prod(shape))

        def load(name: str) -> np.ndarray:
            return np.unpackbits(np.load(Path(work) / name), count=n).reshape(shape).astype(bool)

        if args.medseg_only:
            mon = {"seconds": float("nan"), "peak_mb": float("nan"), "baseline_mb": med["baseline_mb"]}
            lung = m_prob = m_final = b_mask = None
        else:
            mon = run_forked(monai_job, ct_path, model, work, args.threads)
            lung = load("lung.npy")
            m_prob, m_final, b_mask = load("medseg_prob_mask.npy"), load("medseg_final.npy"), load("monai_mask.npy")
        result = {
            "shape": list(shape),
            "spacing": list(size["spacing"]),
            "model": "random-weights" if args.random_weights else model,
            "threads": args.threads,
            "medseg_s": round(med["seconds"], 2),
            "monai_s": round(mon["seconds"], 2),
            "speedup_vs_monai": round(mon["seconds"] / med["seconds"], 2),
            "medseg_peak_mb": round(med["peak_mb"], 1),
            "monai_peak_mb": round(mon["peak_mb"], 1),
            "memory_ratio_vs_monai": round(med["peak_mb"] / mon["peak_mb"], 3),
            "process_baseline_mb": round(min(med["baseline_mb"], mon["baseline_mb"]), 1),
            "dice_in_lung": None if lung is None else round(dice(m_prob & lung, b_mask & lung), 4),
            "dice_in_lung_final": None if lung is None else round(dice(m_final & lung, b_mask & lung), 4),
            "medseg_window": med["window"],
            "medseg_overlap": med["overlap"],
            "monai_overlap": 0.5,
            "windows_run": med["windows"]["windows_run"],
            "windows_roi_total": med["windows"]["windows_total"],
            "medseg_timings_s": {k: round(v, 2) for k, v in med["timings"].items()},
            "n_nodules_found": med["n_nodules"],
            "n_nodules_phantom": n_truth,
            "phantom_s": round(phantom_s, 1),
        }
    if args.medseg_only:
        for key in ("monai_s", "speedup_vs_monai", "monai_peak_mb", "memory_ratio_vs_monai"):
            result[key] = None
        result["network_s_per_window"] = round(med["timings"].get("network_s", 0) / max(1, result["windows_run"]), 3)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"phantom {result['shape']} at {result['spacing']} mm, model {result['model']}, {args.threads} threads")
        print(f"medseg infer : {result['medseg_s']:8.1f} s  peak {result['medseg_peak_mb']:8.0f} MB  "
              f"({result['windows_run']} windows, overlap {result['medseg_overlap']})")
        if args.medseg_only:
            print(f"medseg stages: {result['medseg_timings_s']}")
            return 0
        print(f"plain MONAI  : {result['monai_s']:8.1f} s  peak {result['monai_peak_mb']:8.0f} MB  (overlap 0.5)")
        print(f"speedup {result['speedup_vs_monai']}x, memory ratio {result['memory_ratio_vs_monai']}, "
              f"Dice in lung {result['dice_in_lung']} (final masks {result['dice_in_lung_final']})")
        print(f"medseg stages: {result['medseg_timings_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
