"""Training throughput: patches/s with the real data loader vs the same model fed cached tensors.

    python benchmarks/train_throughput.py [--quick] [--json] [--data DIR] [--device cpu|cuda]
    python benchmarks/train_throughput.py --draws N --data DIR [--data DIR ...] [--json]

The loader path is medseg's training pipeline (CacheDataset + fg-oversampled crops + augmentation,
through the DataLoader); the baseline feeds pre-built tensors of the same shape to the same model
in the same process. ``loader_overhead`` = baseline patches/s / loader patches/s (1.0 = free).
Without ``--data`` (or when the shared LIDC folder is absent) a small synthetic set is used.

``--draws N``: the data side alone, on the given folders (whole-scan hybrids and phantoms are where
it matters) under the bundled model's plan: N patches drawn from medseg's training dataset
(``copy_cache=False``, the patch copied after the crop) against the same draws with MONAI's
default per-draw deep copy of the cached case, in the same process on the same cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medseg.models.device import describe_machine
from medseg.models.precision import cpu_has_native_bf16

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lidc_nodule_vois"


def _synthetic(root: Path, n: int) -> Path:
    import nibabel as nib

    g = np.indices((48, 48, 16))
    for i in range(n):
        m = (sum((g[a] - c) ** 2 for a, c in enumerate((24, 24, 8))) <= 25).astype(np.uint8)
        img = np.where(m > 0, 40, -850).astype(np.int16)
        for sub, arr in (("image", img), ("mask", m)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, np.diag([0.7, 0.7, 1.25, 1])), str(root / sub / f"case{i}.nii.gz"))
    return root


def measure(device: torch.device, data: Path, cases: int, steps: int, workers: int, precision: str = "fp32") -> dict:
    from monai.data import DataLoader

    from medseg.data.datasets import read_dataset
    from medseg.data.planning import fingerprint_dataset, make_plan
    from medseg.models import build_network
    from medseg.models.precision import autocast, resolve_precision
    from medseg.tasks import load_task
    from medseg.training.losses import build_loss
    from medseg.training.run import training_dataset

    task = load_task("lung_nodule")
    cs = read_dataset(data)[:cases]
    plan = make_plan(fingerprint_dataset(cs, 2000), task, device.type,
                     torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None)
    ds = training_dataset(cs, plan, task)  # what `medseg train` draws from
    model = build_network(plan.network).to(device).train()
    loss_fn = build_loss(task.loss)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    dtype = resolve_precision(precision, device)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            out = model(x)
        loss_fn(out, y).backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    bs = plan.batch_size
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=(steps + 2) * bs)
    loader = DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    it = iter(loader)
    for _ in range(2):  # warm-up (workers start, cudnn autotune)
        b = next(it)
        step(b["image"].as_tensor().to(device) if hasattr(b["image"], "as_tensor") else b["image"].to(device),
             b["label"].to(device))
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        b = next(it)
        x = b["image"].as_tensor() if hasattr(b["image"], "as_tensor") else b["image"]
        y = b["label"].as_tensor() if hasattr(b["label"], "as_tensor") else b["label"]
        step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
    sync()
    loader_s = time.perf_counter() - t

    x = torch.randn(bs, 1, *plan.patch_size, device=device)
    y = (torch.rand(bs, 1, *plan.patch_size, device=device) > 0.9).float()
    step(x, y)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    sync()
    cached_s = time.perf_counter() - t
    loader_ps, cached_ps = steps * bs / loader_s, steps * bs / cached_s
    return {
        "device": device.type, "precision": precision, "patch_size": list(plan.patch_size), "batch_size": bs,
        "filters": plan.network.filters, "steps": steps, "num_workers": workers, "threads": torch.get_num_threads(),
        "loader_patches_per_s": round(loader_ps, 2), "cached_patches_per_s": round(cached_ps, 2),
        "loader_overhead": round(cached_ps / loader_ps, 3),
    }


def draw_rate(folders: list[Path], draws: int, seed: int = 0) -> dict:
    """Patches per second drawn from the training dataset, without and with the per-draw deep copy."""
    from medseg.data.datasets import read_datasets
    from medseg.models import load_checkpoint_dict
    from medseg.models.checkpoint import BUNDLED_MODEL
    from medseg.plan import Plan
    from medseg.tasks import load_task
    from medseg.training.run import training_dataset

    plan = Plan.from_dict(load_checkpoint_dict(BUNDLED_MODEL)["plan"])
    cases = read_datasets(folders)
    t = time.perf_counter()
    ds = training_dataset(cases, plan, load_task("lung_nodule"))
    cache_s = time.perf_counter() - t
    cache_mb: dict[str, float] = {}
    for item in ds._cache:  # what the cache holds, by key (the indices are the sampling centres)
        for key, value in item.items():
            size = sum(getattr(v, "nbytes", 0) for v in value) if isinstance(value, list) else getattr(value, "nbytes", 0)
            cache_mb[key] = cache_mb.get(key, 0.0) + size / 2**20
    order = np.random.default_rng(seed).integers(0, len(ds), draws)
    rates = {}
    for copy in (False, True):  # medseg's setting first, then MONAI's default on the same cache
        ds.copy_cache = copy
        ds.transform.set_random_state(seed=seed)
        t = time.perf_counter()
        for i in order:
            ds[int(i)]
        rates[copy] = draws / (time.perf_counter() - t)
    return {"benchmark": "train_throughput --draws", "data": [str(f) for f in folders], "cases": len(cases),
            "patch_size": list(plan.patch_size), "spacing": list(plan.spacing), "draws": draws,
            "cache_build_s": round(cache_s, 1), "cache_mb": {k: round(v) for k, v in cache_mb.items()},
            "patches_per_s": round(rates[False], 2),
            "patches_per_s_monai_deepcopy": round(rates[True], 2),
            "speedup_vs_deepcopy": round(rates[False] / rates[True], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke size: few cases and steps")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--data", type=Path, action="append", default=None,
                    help="dataset folder (repeatable with --draws; default: the shared LIDC crops)")
    ap.add_argument("--draws", type=int, default=0, metavar="N",
                    help="only the data side: N patch draws, medseg's dataset vs MONAI's per-draw deep copy")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu, plus cuda when present)")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    if args.draws:
        out = draw_rate(args.data or [SHARED], args.draws)
        print(json.dumps(out) if args.json else
              f"{out['patches_per_s']} patches/s against {out['patches_per_s_monai_deepcopy']} with MONAI's per-draw "
              f"deep copy (x{out['speedup_vs_deepcopy']}) over {out['cases']} cases, {out['draws']} draws")
        return 0
    if args.data and len(args.data) > 1:
        ap.error("one --data folder without --draws")
    args.data = args.data[0] if args.data else None
    cases, steps = (8, 3) if args.quick else (64, 20)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or (SHARED if SHARED.is_dir() else _synthetic(Path(tmp) / "syn", cases))
        results = []
        for d in devices:
            workers = args.workers if args.workers is not None else (1 if d == "cpu" else 6)
            precisions = ["fp32"] + (["bf16"] if d == "cuda" or cpu_has_native_bf16() else [])
            for prec in precisions:  # the same data and model size, one after the other
                results.append(measure(torch.device(d), data, cases, steps if d == "cpu" else steps * 5, workers, prec))
    out = {"benchmark": "train_throughput", "data": str(data), "results": results,
           "machine": describe_machine().to_dict()}
    by = {(r["device"], r["precision"]): r for r in results}
    for d in devices:
        if (d, "bf16") in by:  # the ratio against fp32 measured in this process
            out[f"{d}_bf16_speedup_cached"] = round(by[(d, "bf16")]["cached_patches_per_s"]
                                                    / by[(d, "fp32")]["cached_patches_per_s"], 3)
            out[f"{d}_bf16_speedup_loader"] = round(by[(d, "bf16")]["loader_patches_per_s"]
                                                    / by[(d, "fp32")]["loader_patches_per_s"], 3)
    if args.json:
        print(json.dumps(out))
    else:
        print(describe_machine().line())
        for r in results:
            print(f"{r['device']} {r['precision']}: loader {r['loader_patches_per_s']} patches/s, cached tensors "
                  f"{r['cached_patches_per_s']} patches/s, loader overhead x{r['loader_overhead']} "
                  f"(patch {r['patch_size']}, batch {r['batch_size']}, workers {r['num_workers']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
