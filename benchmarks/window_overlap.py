"""Sliding-window size and overlap: work per scan against how much the output moves.

    python benchmarks/window_overlap.py [--scan FILE] [--configs 48,48,16@0.5 96,96,32@0.25 ...]
                                        [--model CKPT] [--precision auto|fp32|bf16] [--json]

Each configuration (window in plan voxels @ overlap) runs the shipped predictor over the lung box of
one real scan (default: the real 5 mm chest CT), in this process. For each it prints the windows
run, network seconds, the speed ratio against the first configuration (the training patch at
overlap 0.5, the reference), and how far its output is from the reference: Dice of the p >= 0.5
masks in the lung, components >= 3 mm of the reference that it also marks, and the largest
probability difference.

It prints the network's receptive field: a window smaller than it puts zero padding into every
output voxel's context, so outputs depend on where windows fall whatever the normalisation.
It also measures **placement dependence**, the reason overlap 0.5 is the default: the same
configuration with every window moved by half its stride along every axis (on the plan grid, so
nothing is resampled differently); masks are compared on the voxels both cover. A network whose
output did not depend on where windows fall (no per-window statistics) would give Dice 1.0 there.
Everything runs on the plan grid over the lung box's windows, as ``Predictor.predict_roi`` does.
Detection figures for a configuration come from ``benchmarks/real_detection.py --window --overlap``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class Config:
    window: tuple[int, int, int] | None  # None: the plan's training patch
    overlap: float

    @classmethod
    def parse(cls, text: str) -> Config:
        window, _, overlap = text.partition("@")
        size = None if window in ("", "plan") else tuple(int(v) for v in window.split(","))
        return cls(size, float(overlap or 0.5))  # type: ignore[arg-type]


@dataclass
class Row:
    window: list[int]
    overlap: float
    windows_run: int
    network_s: float
    speedup_vs_reference: float
    dice_vs_reference: float
    reference_components_found: str
    max_abs_probability_difference: float
    placement_dice: float


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def components_found(reference: np.ndarray, other: np.ndarray, voxel_mm3: float, min_mm: float = 3.0) -> str:
    """``k/n``: reference components >= ``min_mm`` (equivalent diameter) that ``other`` overlaps."""
    from scipy import ndimage

    labels, n = ndimage.label(reference, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel())
    min_voxels = np.pi / 6.0 * min_mm**3 / voxel_mm3
    big = [i for i in range(1, n + 1) if sizes[i] >= min_voxels]
    hit = set(np.unique(labels[other & (labels > 0)]).tolist())
    return f"{sum(i in hit for i in big)}/{len(big)}"


@dataclass
class GridCase:
    """One scan on the plan grid: the network input, the lung and the windows' run mask."""

    image: np.ndarray
    lung: np.ndarray
    run_mask: np.ndarray
    voxel_mm3: float


def grid_case(predictor, volume, lung: np.ndarray) -> GridCase:  # noqa: ANN001
    geo = predictor.model_geometry(volume, None)
    image = geo.image(volume.array, predictor.plan.intensity).full()
    return GridCase(image, geo.label(lung) > 0, predictor.window_mask(geo, lung),
                    float(np.prod(predictor.plan.spacing)))


def probability(predictor, case: GridCase, shift: tuple[int, int, int] = (0, 0, 0)) -> tuple[np.ndarray, dict, float]:  # noqa: ANN001
    """The shipped sliding window on the plan grid, its windows moved by ``shift`` voxels (the image
    loses its first ``shift`` planes, so the window grid starts there: no resampling changes)."""
    from medseg.inference.sliding_window import sliding_window_probability
    from medseg.preprocess import pad_value

    cut = tuple(slice(s, None) for s in shift)
    t0 = time.perf_counter()
    prob, counts = sliding_window_probability(
        case.image[cut], predictor.network, predictor.window, overlap=predictor.overlap,
        sw_batch_size=predictor.sw_batch_size, mask=case.run_mask[cut], device=predictor.device,
        autocast_dtype=predictor.autocast_dtype, cval=pad_value(predictor.plan.intensity))
    return prob, counts, time.perf_counter() - t0


def half_stride(predictor) -> tuple[int, int, int]:  # noqa: ANN001
    return tuple(max(1, int(round(w * (1.0 - predictor.overlap) / 2.0))) for w in predictor.window)  # type: ignore[return-value]


def measure(config: Config, reference: tuple[np.ndarray, np.ndarray, float] | None, case: GridCase,
            args: argparse.Namespace) -> tuple[Row, np.ndarray]:
    from medseg.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(args.model, device="cpu", window=config.window,
                                          overlap=config.overlap, precision=args.precision, runtime=args.runtime)
    prob, counts, seconds = probability(predictor, case)
    mask = (prob >= 0.5) & case.lung
    ref_mask, ref_prob, ref_s = (mask, prob, seconds) if reference is None else reference
    shift = half_stride(predictor)
    moved, _, _ = probability(predictor, case, shift)
    cut = tuple(slice(s, None) for s in shift)
    placement = dice(mask[cut], (moved >= 0.5) & case.lung[cut])
    row = Row(list(predictor.window), config.overlap, int(counts["windows_run"]), round(seconds, 2),
              round(ref_s / seconds, 2), round(dice(ref_mask, mask), 4),
              components_found(ref_mask, mask, case.voxel_mm3),
              round(float(np.abs(prob - ref_prob)[case.lung].max()), 3), round(placement, 4))
    return row, prob


def network_receptive_field(model: str | None, probe: tuple[int, int, int] = (112, 112, 112)) -> tuple[int, ...]:
    """The convolutions' receptive field in plan voxels, measured with instance norm swapped for
    batch norm (instance statistics make every output depend on the whole window)."""
    from dataclasses import replace

    from medseg.models import build_network, load_checkpoint_dict
    from medseg.models.checkpoint import BUNDLED_MODEL
    from medseg.models.network import load_weights_across_norms, receptive_field
    from medseg.plan import Plan

    payload = load_checkpoint_dict(model or BUNDLED_MODEL)
    net = build_network(replace(Plan.from_dict(payload["plan"]).network, norm_name="batch"))
    load_weights_across_norms(net, payload["state_dict"])
    return receptive_field(net, probe)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scan", default=str(SHARED / "real_chest" / "chest_ct_5mm_mass.nrrd"))
    ap.add_argument("--configs", nargs="+", default=["plan@0.5", "plan@0.25", "96,96,32@0.5", "96,96,32@0.25",
                                                     "128,128,32@0.25"],
                    help="WINDOW@OVERLAP, WINDOW = X,Y,Z plan voxels or 'plan'; the first is the reference")
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"])
    ap.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime", "openvino"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from medseg.inference.lung_mask import compute_lung_mask
    from medseg.io import read_volume

    torch.set_num_threads(max(1, torch.get_num_threads()))
    volume = read_volume(args.scan)
    lung = compute_lung_mask(volume).mask > 0
    rows: list[Row] = []
    reference = None
    case = None
    t0 = time.perf_counter()
    field = network_receptive_field(args.model)
    if not args.json:
        print(f"receptive field {field} plan voxels (instance norm: the whole window)", flush=True)
    for text in args.configs:
        config = Config.parse(text)
        if case is None:
            from medseg.inference.predictor import Predictor

            case = grid_case(Predictor.from_checkpoint(args.model, device="cpu"), volume, lung)
        row, prob = measure(config, reference, case, args)
        if reference is None:
            reference = ((prob >= 0.5) & case.lung, prob, row.network_s)
        rows.append(row)
        if not args.json:
            print("  ".join(f"{k}={v}" for k, v in asdict(row).items()), flush=True)
    from medseg.models.device import describe_machine
    result = {"benchmark": "window_overlap", "scan": Path(args.scan).name, "model": args.model or "bundled",
              "precision": args.precision or "plan", "runtime": args.runtime, "receptive_field": list(field),
              "rows": [asdict(r) for r in rows],
              "elapsed_s": round(time.perf_counter() - t0, 1), "machine": describe_machine().to_dict()}
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
