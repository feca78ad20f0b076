"""Inference speed and memory per network runtime x precision, against plain MONAI sliding_window_inference.

Two modes, on the same scan: a chest phantom (512x512x300 at 0.7x0.7x1.25 mm; ``--quick``: a small
one) or a real CT (``--scan FILE``, e.g. ``../shared/data/real_chest/chest_ct_5mm_mass.nrrd``).

* whole scan (default): for each runtime x precision (torch fp32/bf16, onnxruntime fp32/int8,
  openvino fp32/bf16/int8; those not installed are skipped with the reason printed) ``Segmenter.run``
  runs the whole path - read, lung mask, ROI windows at the plan spacing, postprocessing,
  measurements and every output file - in its own forked child, so each peak RSS (``ru_maxrss``)
  is its own. Reported: network seconds (the fine pass's sliding window), whole-scan seconds,
  peak RSS, the speed ratio to plain MONAI fp32 and the Dice of the thresholded probability mask
  (and of the final nodule mask) against torch fp32 inside the lung. torch fp32 always runs: it is
  the reference. Plain MONAI (``--medseg-only`` skips it: most of an hour at full size on 2 cores)
  reorients and resamples the *whole* volume to the plan spacing with the same resampler, runs
  ``sliding_window_inference`` (the training patch, overlap 0.5, Gaussian: how a MONAI user runs
  the checkpoint, whatever window and overlap medseg's plan chooses) over all of it, softmax,
  resample back, threshold.
* windows (``--windows N``): N real normalised windows of the scan (the predictor's network input,
  drawn from the lung) through each runtime in one process: conversion seconds, milliseconds per
  window, largest logit difference and foreground Dice against torch fp32. Fast; good for choosing.

INT8 is post-training static quantisation on ``--calib-windows`` windows drawn from
``--calibration FILE`` (default: the benchmarked scan itself; pass another scan for held-out
figures) - ONNX Runtime ``quantize_static``, OpenVINO ``nncf.quantize``. Calibration seconds are
reported apart from the run. Prints a table, or one JSON object with ``--json``.
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

FULL = {"shape": (512, 512, 300), "spacing": (0.7, 0.7, 1.25)}
QUICK = {"shape": (160, 160, 48), "spacing": (1.0, 1.0, 1.6)}
#: every runtime x precision this benchmark knows, in report order
COMBOS = (("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
          ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"))
REFERENCE = ("torch", "fp32")


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


def tag_of(runtime: str, precision: str) -> str:
    return f"{runtime}-{precision}"


# ------------------------------------------------------------------------------------- choosing
def select_combos(runtimes: list[str] | None, precisions: list[str] | None) -> tuple[list[tuple[str, str]],
                                                                                      list[dict[str, str]]]:
    """(runtime x precision pairs to run, the reference first; the skipped ones with the reason)."""
    from medseg.models.runtime import missing_reason

    wanted = [c for c in COMBOS if (not runtimes or c[0] in runtimes) and (not precisions or c[1] in precisions)]
    extra = [(r, p) for r in runtimes or [] for p in precisions or [] if (r, p) not in COMBOS]
    run, skipped = [REFERENCE], []
    for runtime, precision in wanted + extra:
        reason = missing_reason(runtime, precision) if runtime != "torch" or precision == "int8" else None
        if reason:
            skipped.append({"runtime": runtime, "precision": precision, "reason": reason})
        elif (runtime, precision) not in run:
            run.append((runtime, precision))
    return run, skipped


def install_runner(seg: Any, runtime: str, precision: str, calibration: str, n_calib: int) -> dict[str, float]:
    """Point ``seg``'s predictor (and the coarse mass pass) at the runner for runtime x precision."""
    import medseg.inference.masses as masses
    from medseg.io import read_volume
    from medseg.models.runtime import calibration_windows, make_runner

    pred, out = seg.predictor, {"calib_s": 0.0}
    if precision == "int8":
        t = time.perf_counter()
        windows = calibration_windows(pred, read_volume(calibration), n=n_calib)
        out["calib_s"] = time.perf_counter() - t
        pred.network = make_runner(pred.model, runtime, "int8", pred.window, calibration=windows)
        pred.runtime, pred.network_precision, pred.autocast_dtype = runtime, "int8", None
    coarse = masses.coarse_predictor

    def shared(predictor, scale):  # the mass pass runs the same converted network
        c = coarse(predictor, scale)
        c.network, c.autocast_dtype = predictor.network, predictor.autocast_dtype
        return c

    masses.coarse_predictor = shared
    out["convert_s"] = float(getattr(pred.network, "convert_s", 0.0))
    return out


# ------------------------------------------------------------------------------------- whole scan
def medseg_job(ct_path: str, model: str, out_dir: str, work: str, overlap: float | None, threads: int,
               runtime: str = "torch", precision: str = "fp32", calibration: str | None = None,
               n_calib: int = 16, window: tuple[int, int, int] | None = None) -> dict:
    import torch

    from medseg.inference.pipeline import InferenceSettings, Segmenter

    torch.set_num_threads(threads)
    base = _peak_mb()
    t = time.perf_counter()
    seg = Segmenter(InferenceSettings(model=model, device="cpu", quiet=True, runtime=runtime, window=window,
                                      precision="fp32" if precision == "int8" else precision))
    setup = install_runner(seg, runtime, precision, calibration or ct_path, n_calib)
    setup["setup_s"] = time.perf_counter() - t - setup["calib_s"]
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
    if "roi" not in captured:
        raise RuntimeError(f"{ct_path}: no network ran (status {res.status}): benchmark a chest CT")
    save_masks(seg, res, captured, work, tag_of(runtime, precision))
    roi = captured["roi"]
    return {
        "runtime": runtime, "precision": precision, "seconds": elapsed, "peak_mb": peak, "baseline_mb": base,
        "network_s": roi.stats.get("network_s"), "timings": res.timings, **setup,
        "windows": {k: roi.stats.get(k) for k in ("windows_total", "windows_run")},
        "window": list(seg.predictor.window), "overlap": seg.predictor.overlap, "n_nodules": res.n_nodules,
        "shape": list(captured["mask"].shape if captured["mask"] is not None else roi.probability.shape),
    }


def save_masks(seg: Any, res: Any, captured: dict, work: str, tag: str) -> None:
    """The thresholded probability, the final nodule mask and the lung mask, packed, for the parent."""
    from medseg.io import read_volume

    roi, lung = captured["roi"], captured["mask"]
    shape = lung.shape if lung is not None else roi.probability.shape
    prob_mask = np.zeros(shape, bool)
    prob_mask[roi.box] = roi.probability >= seg.plan.inference.threshold
    np.save(Path(work) / f"{tag}_prob_mask.npy", np.packbits(prob_mask))
    np.save(Path(work) / "lung.npy", np.packbits(lung > 0 if lung is not None else np.ones(shape, bool)))
    labels = read_volume(res.outputs["nodules"]).array
    np.save(Path(work) / f"{tag}_final.npy", np.packbits(labels > 0))


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
    roi = tuple(int(v) for v in pred.plan.patch_size)  # the training patch, whatever window medseg runs
    with torch.inference_mode():
        logits = sliding_window_inference(
            torch.from_numpy(img)[None, None], roi, pred.sw_batch_size, pred.model,
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
    return {"seconds": elapsed, "peak_mb": peak, "baseline_mb": base, "window": list(roi)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def whole_scan(args: argparse.Namespace, ct_path: str, model: str, work: str,
               combos: list[tuple[str, str]]) -> dict[str, Any]:
    """Every combo and the MONAI baseline on ``ct_path``; figures and Dice against torch fp32."""
    runs = []
    for runtime, precision in combos:
        out = str(Path(work) / f"out-{tag_of(runtime, precision)}")
        if not args.json:
            print(f"running {runtime} {precision} ...", file=sys.stderr, flush=True)
        runs.append(run_forked(medseg_job, ct_path, model, out, work, args.overlap, args.threads, runtime,
                               precision, args.calibration, args.calib_windows, args.window))
    shape = tuple(runs[0]["shape"])
    n = int(np.prod(shape))

    def load(name: str) -> np.ndarray:
        return np.unpackbits(np.load(Path(work) / name), count=n).reshape(shape).astype(bool)

    mon = None if args.medseg_only else run_forked(monai_job, ct_path, model, work, args.threads)
    lung, ref_tag = load("lung.npy"), tag_of(*REFERENCE)
    ref_prob, ref_final = load(f"{ref_tag}_prob_mask.npy") & lung, load(f"{ref_tag}_final.npy") & lung
    monai_mask = None if mon is None else load("monai_mask.npy") & lung
    rows = [whole_scan_row(r, load, lung, ref_prob, ref_final, monai_mask, mon) for r in runs]
    first = runs[0]
    return {"mode": "whole_scan", "shape": list(shape), "window": first["window"], "overlap": first["overlap"],
            "windows_run": first["windows"]["windows_run"], "windows_roi_total": first["windows"]["windows_total"],
            "monai_s": None if mon is None else _r(mon["seconds"]),
            "monai_peak_mb": None if mon is None else _r(mon["peak_mb"], 1),
            "process_baseline_mb": _r(min(r["baseline_mb"] for r in runs), 1), "results": rows}


def whole_scan_row(r: dict, load, lung: np.ndarray, ref_prob: np.ndarray, ref_final: np.ndarray,
                   monai_mask: np.ndarray | None, mon: dict | None) -> dict[str, Any]:
    tag = tag_of(r["runtime"], r["precision"])
    prob, final = load(f"{tag}_prob_mask.npy") & lung, load(f"{tag}_final.npy") & lung
    return {
        "runtime": r["runtime"], "precision": r["precision"], "network_s": _r(r["network_s"]),
        "seconds": _r(r["seconds"]), "peak_mb": _r(r["peak_mb"], 1),
        "speedup_vs_monai_fp32": None if mon is None else _r(mon["seconds"] / r["seconds"]),
        "memory_ratio_vs_monai": None if mon is None else _r(r["peak_mb"] / mon["peak_mb"], 3),
        "dice_vs_torch_fp32": _r(dice(prob, ref_prob), 4), "dice_final_vs_torch_fp32": _r(dice(final, ref_final), 4),
        "dice_vs_monai": None if monai_mask is None else _r(dice(prob, monai_mask), 4),
        "mask_voxels": int(prob.sum()), "reference_mask_voxels": int(ref_prob.sum()),
        "setup_s": _r(r["setup_s"]), "convert_s": _r(r["convert_s"]), "calib_s": _r(r["calib_s"]),
        "n_nodules": r["n_nodules"], "timings_s": {k: _r(v) for k, v in r["timings"].items()},
    }


# ------------------------------------------------------------------------------------- windows
def draw_windows(ct_path: str, model: str, calibration: str | None, n: int, n_calib: int, seed: int):
    """(the predictor, N evaluation windows, calibration windows): one draw split in two when the
    calibration scan is the benchmarked one, so the two sets never share a window."""
    from medseg.inference.predictor import Predictor
    from medseg.io import read_volume
    from medseg.models.runtime import calibration_windows

    pred = Predictor.from_checkpoint(model, "cpu", precision="fp32")
    vol = read_volume(ct_path)
    if calibration in (None, ct_path):
        drawn = calibration_windows(pred, vol, n=n + n_calib, seed=seed)
        order = np.random.default_rng(seed).permutation(len(drawn))
        drawn = [drawn[i] for i in order]
        return pred, drawn[:n], drawn[n:]
    calib = calibration_windows(pred, read_volume(calibration), n=n_calib, seed=seed)
    return pred, calibration_windows(pred, vol, n=n, seed=seed), calib


def time_runner(run, x_batches: list, bf16: bool) -> tuple[float, list]:
    """(seconds per window over the batches after one warm-up batch, the logits)."""
    import torch

    from medseg.models.precision import autocast

    dtype = torch.bfloat16 if bf16 else None
    outs = []
    with torch.inference_mode():
        with autocast(torch.device("cpu"), dtype):
            run(x_batches[0])
        t = time.perf_counter()
        for x in x_batches:
            with autocast(torch.device("cpu"), dtype):
                outs.append(run(x).float())
        elapsed = time.perf_counter() - t
    return elapsed / sum(len(x) for x in x_batches), outs


def windows_bench(args: argparse.Namespace, ct_path: str, model: str,
                  combos: list[tuple[str, str]]) -> dict[str, Any]:
    """Each combo on the same N windows, in this process."""
    import torch

    from medseg.models.runtime import make_runner

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    pred, windows, calib = draw_windows(ct_path, model, args.calibration, args.windows, args.calib_windows, args.seed)
    draw_s = time.perf_counter() - t
    x = torch.from_numpy(np.concatenate(windows))
    batches = list(torch.split(x, pred.sw_batch_size))
    rows, ref = [], None
    for runtime, precision in combos:
        if not args.json:
            print(f"running {runtime} {precision} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        run = make_runner(pred.model, runtime, None if runtime == "torch" else precision, pred.window,
                          calibration=calib if precision == "int8" else None)
        convert_s = time.perf_counter() - t
        per_window, outs = time_runner(run, batches, runtime == "torch" and precision == "bf16")
        logits = torch.cat(outs)
        ref = logits if ref is None else ref
        rows.append(window_row(runtime, precision, convert_s, per_window, logits, ref, len(calib)))
    return {"mode": "windows", "n_windows": len(windows), "window": list(pred.window),
            "batch": pred.sw_batch_size, "draw_s": _r(draw_s), "results": rows}


def window_row(runtime: str, precision: str, convert_s: float, per_window: float, logits, ref,
               n_calib: int) -> dict[str, Any]:
    fg, ref_fg = (logits[:, 1] > logits[:, 0]).numpy(), (ref[:, 1] > ref[:, 0]).numpy()
    return {"runtime": runtime, "precision": precision, "convert_s": _r(convert_s),
            "ms_per_window": _r(per_window * 1000, 1), "max_abs_logit_diff": _r(float((logits - ref).abs().max()), 4),
            "dice_fg_vs_torch_fp32": _r(dice(fg, ref_fg), 4), "fg_voxels": int(fg.sum()),
            "calibration_windows": n_calib if precision == "int8" else None}


# ------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small phantom (smoke run)")
    ap.add_argument("--scan", default=None, help="a real CT (file or DICOM folder) instead of the phantom")
    ap.add_argument("--windows", type=int, default=0, metavar="N",
                    help="per-window micro-benchmark on N windows of the scan instead of whole-scan runs")
    ap.add_argument("--runtimes", default=None, help="comma list of torch,onnxruntime,openvino (default: all)")
    ap.add_argument("--precisions", default=None, help="comma list of fp32,bf16,int8 (default: all)")
    ap.add_argument("--calibration", default=None, help="INT8 calibration scan (default: the benchmarked scan)")
    ap.add_argument("--calib-windows", type=int, default=16, help="INT8 calibration windows (about 100 MB each "
                                                                  "while ONNX Runtime calibrates)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--model", default=None, help="checkpoint; default: the bundled model")
    ap.add_argument("--random-weights", action="store_true",
                    help="no trained model: seeded random weights with the default plan (masks then "
                         "only show that the paths agree, not that they are good)")
    ap.add_argument("--filters", default=None, metavar="F1,F2,F3,F4",
                    help="with --random-weights: the network's filters per level (e.g. 32,64,128,256)")
    ap.add_argument("--res-block", action="store_true", help="with --random-weights: residual blocks")
    ap.add_argument("--overlap", type=float, default=None, help="medseg overlap (default: the plan's)")
    ap.add_argument("--window", type=lambda t: tuple(int(v) for v in t.split(",")), default=None,
                    help="medseg sliding-window size X,Y,Z in plan voxels (default: the plan's)")
    ap.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--medseg-only", action="store_true",
                    help="skip the plain-MONAI baseline (most of an hour at full size on 2 cores); its figures "
                         "are then null")
    args = ap.parse_args(argv)
    args.runtimes = args.runtimes.split(",") if args.runtimes else None
    args.precisions = args.precisions.split(",") if args.precisions else None
    return args


def resolve_model(args: argparse.Namespace, work: str) -> str | None:
    from medseg.models import BUNDLED_MODEL

    if args.random_weights:
        import torch

        from medseg.models import build_network, save_checkpoint
        from medseg.plan import Plan

        torch.manual_seed(args.seed)
        plan = Plan()
        if args.filters or args.res_block:  # a variant of the bundled network, for its inference cost
            if BUNDLED_MODEL.is_file():  # the bundled plan: same spacing, window and normalisation
                from medseg.models import load_checkpoint_dict

                plan = Plan.from_dict(load_checkpoint_dict(BUNDLED_MODEL)["plan"])
            filters = [int(v) for v in args.filters.split(",")] if args.filters else plan.network.filters
            if len(filters) != len(plan.network.filters):
                raise SystemExit(f"--filters needs {len(plan.network.filters)} levels, got {filters}")
            plan.network = replace(plan.network, filters=filters, res_block=bool(args.res_block))
        return str(save_checkpoint(Path(work) / "random.pt", build_network(plan.network), plan))
    if args.model is None and not BUNDLED_MODEL.is_file():
        return None
    return args.model or str(BUNDLED_MODEL)


def make_scan(args: argparse.Namespace, work: str) -> tuple[str, dict[str, Any]]:
    """(the scan's path, what to report about it): ``--scan`` as given, else a phantom written to ``work``."""
    if args.scan:
        return args.scan, {"scan": args.scan}
    from medseg.data.phantom import make_phantom
    from medseg.io import write_volume

    size = QUICK if args.quick else FULL
    t = time.perf_counter()
    ph = make_phantom(seed=args.seed, shape=size["shape"], spacing=size["spacing"])
    path = str(write_volume(ph.ct, Path(work) / "chest.nii.gz"))
    facts = {"scan": "phantom", "spacing": list(size["spacing"]), "n_nodules_phantom": len(ph.info["nodules"]),
             "phantom_s": _r(time.perf_counter() - t, 1)}
    del ph
    gc.collect()
    return path, facts


def print_table(result: dict[str, Any]) -> None:
    from medseg.models.device import MachineInfo

    print(MachineInfo(**result["machine"]).line())
    if result["mode"] == "windows":
        print(f"{result['n_windows']} windows {result['window']} (batch {result['batch']}), "
              f"model {result['model']}, {result['threads']} threads, scan {result['scan']}")
        print(f"{'runtime':12} {'prec':5} {'ms/window':>9} {'convert s':>9} {'max|dlogit|':>11} {'Dice fg':>8} "
              f"{'fg voxels':>9}")
        for r in result["results"]:
            print(f"{r['runtime']:12} {r['precision']:5} {r['ms_per_window']:9.1f} {r['convert_s']:9.1f} "
                  f"{r['max_abs_logit_diff']:11.4f} {r['dice_fg_vs_torch_fp32']:8.4f} {r['fg_voxels']:9d}")
    else:
        print(f"scan {result['scan']} {result['shape']}, model {result['model']}, {result['threads']} threads, "
              f"{result['windows_run']} windows {result['window']}, overlap {result['overlap']}")
        monai = "skipped" if result["monai_s"] is None else f"{result['monai_s']:.1f} s, peak {result['monai_peak_mb']:.0f} MB"
        print(f"plain MONAI fp32: {monai}")
        print(f"{'runtime':12} {'prec':5} {'network s':>9} {'scan s':>8} {'peak MB':>8} {'vs MONAI':>8} "
              f"{'Dice':>7} {'Dice fin':>8} {'voxels':>8} {'conv s':>6}")
        for r in result["results"]:
            ratio = "-" if r["speedup_vs_monai_fp32"] is None else f"{r['speedup_vs_monai_fp32']:.2f}x"
            print(f"{r['runtime']:12} {r['precision']:5} {r['network_s']:9.1f} {r['seconds']:8.1f} {r['peak_mb']:8.0f} "
                  f"{ratio:>8} {r['dice_vs_torch_fp32']:7.4f} {r['dice_final_vs_torch_fp32']:8.4f} {r['mask_voxels']:8d} "
                  f"{r['convert_s']:6.1f}")
    for s in result["skipped"]:
        print(f"skipped {s['runtime']} {s['precision']}: {s['reason']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (args.filters or args.res_block) and not args.random_weights:
        print("--filters and --res-block describe a network variant: use them with --random-weights", file=sys.stderr)
        return 2
    combos, skipped = select_combos(args.runtimes, args.precisions)
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as work:
        model = resolve_model(args, work)
        if model is None:
            print("no bundled model installed: pass --model CKPT or --random-weights", file=sys.stderr)
            return 2
        ct_path, facts = make_scan(args, work)
        bench = windows_bench(args, ct_path, model, combos) if args.windows else whole_scan(
            args, ct_path, model, work, combos)
    variant = f"random-weights filters={args.filters or 'plan'} res_block={bool(args.res_block)}"
    from medseg.models.device import describe_machine
    result = {**facts, **bench, "model": variant if args.random_weights else model,
              "threads": args.threads, "calibration": args.calibration or "the benchmarked scan",
              "skipped": skipped, "machine": describe_machine().to_dict()}
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
