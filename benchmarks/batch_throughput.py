"""Batch throughput: scans per minute with 1 and 2 local worker processes and a local Dask cluster,
against the same cases segmented one by one in a loop in this process (the baseline).

    python benchmarks/batch_throughput.py [--quick] [--json] [--model CKPT] [--cases N]

Without ``--model`` the bundled model is used when installed, else a randomly initialised network
of the default plan's size (same compute as a trained one). ``--quick`` uses a tiny network and
small volumes (a smoke run). Wall times include starting workers and loading the model in each,
which is what a user waits for.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def chest(seed: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Chest-like HU volume: body, two lungs, one solid nodule (fallback when phantoms are missing)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    hu = np.full(shape, -1000.0)
    hu[x**2 + (y / 0.8) ** 2 < 0.9] = 40
    for cx in (-0.45, 0.45):
        hu[((x - cx) / 0.35) ** 2 + (y / 0.55) ** 2 + (z / 0.9) ** 2 < 1] = -850
    c = (rng.choice([-0.45, 0.45]), rng.uniform(-0.2, 0.2), rng.uniform(-0.3, 0.3))
    hu[((x - c[0]) * shape[0]) ** 2 + ((y - c[1]) * shape[1]) ** 2 + ((z - c[2]) * shape[2]) ** 2 < 25] = 30
    return (hu + rng.normal(0, 15, shape)).astype(np.int16)


def scan(seed: int, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
    """A chest-CT phantom (helper A's generator), or the simple chest above if it is unavailable."""
    from medseg.io import Volume

    try:
        from medseg.data.phantom import make_phantom
    except ImportError:
        return Volume(chest(seed, shape), spacing=spacing)
    return make_phantom(seed=seed, shape=shape, spacing=spacing).ct


def make_model(path: Path, quick: bool) -> Path:
    import torch

    from medseg.models import build_network, save_checkpoint
    from medseg.plan import NetworkPlan, Plan

    torch.manual_seed(0)
    if quick:
        plan = Plan(spacing=(1.5, 1.5, 2.0), patch_size=(32, 32, 16),
                    network=NetworkPlan(filters=[8, 16, 32], kernel_size=[[3, 3, 3]] * 3,
                                        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], deep_supervision=False))
    else:
        plan = Plan()
    return save_checkpoint(path, build_network(plan.network), plan)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny network and volumes (smoke run)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--model", help="checkpoint (default: bundled, else a random default-plan network)")
    parser.add_argument("--cases", type=int, help="number of scans (default 6, quick 6)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from medseg.batch.discover import discover
    from medseg.batch.runner import run_batch
    from medseg.inference.pipeline import InferenceSettings, Segmenter
    from medseg.io import write_volume
    from medseg.models import BUNDLED_MODEL

    n = args.cases or 6
    shape = (64, 64, 40) if args.quick else (192, 192, 96)
    spacing = (1.5, 1.5, 2.0) if args.quick else (1.0, 1.0, 2.0)
    tmp = Path(tempfile.mkdtemp(prefix="medseg-batch-bench-"))
    model = args.model or (str(BUNDLED_MODEL) if BUNDLED_MODEL.is_file() and not args.quick
                           else str(make_model(tmp / "model.pt", args.quick)))
    inp = tmp / "in"
    for i in range(n):
        write_volume(scan(i, shape, spacing), inp / f"scan{i:03d}.nii.gz")
    settings = {"model": model, "device": "cpu", "preview": True}

    results: dict[str, dict[str, float]] = {}
    # Baseline: one model, the cases one after another in this process.
    start = time.perf_counter()
    segmenter = Segmenter(InferenceSettings(**settings, quiet=True))
    per_case = []
    for case in discover(inp):
        t0 = time.perf_counter()
        segmenter.run(case.input, tmp / "loop", case_name=case.case_id)
        per_case.append(time.perf_counter() - t0)
    results["loop"] = {"seconds": time.perf_counter() - start, "median_case_s": float(np.median(per_case))}
    del segmenter

    runs = [("workers_1", {"workers": 1}), ("workers_2", {"workers": 2}),
            ("dask_local_2", {"workers": 2, "scheduler": "local"})]
    for name, kw in runs:
        start = time.perf_counter()
        summary = run_batch(inp, tmp / name, quiet=True, **kw, **settings)
        # median_case_s: one case inside a worker, without worker start-up and model loading
        results[name] = {"seconds": time.perf_counter() - start,
                         "median_case_s": float(np.median([r["runtime_s"] for r in summary.records]))}
        if not summary.ok:
            print(f"{name}: {summary.n_failed} case(s) failed: {summary.failed[0]['error']}", file=sys.stderr)
            return 1
    base = results["loop"]["seconds"]
    for r in results.values():
        r["scans_per_min"] = 60.0 * n / r["seconds"]
        r["speedup_vs_loop"] = base / r["seconds"]
    from medseg.models.device import describe_machine
    facts = {"benchmark": "batch_throughput", "quick": args.quick, "cases": n, "shape": list(shape),
             "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
             "model": "random tiny" if args.quick and not args.model else Path(model).name,
             "results": {k: {m: round(v, 3) for m, v in r.items()} for k, r in results.items()},
             "machine": describe_machine().to_dict()}
    if args.json:
        print(json.dumps(facts))
    else:
        print(f"{n} scans of {shape[0]}x{shape[1]}x{shape[2]}, {facts['cores']} cores, model {facts['model']}")
        for name, r in results.items():
            print(f"  {name:<13} {r['seconds']:7.1f} s  {r['scans_per_min']:6.1f} scans/min  "
                  f"x{r['speedup_vs_loop']:.2f} vs loop  (median case {r['median_case_s']:.2f} s)")
    return 0


if __name__ == "__main__":  # spawn-started workers import this module: keep the guard
    sys.exit(main())
