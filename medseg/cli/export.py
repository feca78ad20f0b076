"""``medseg export -m CKPT -o FILE [--format onnx|torchscript] [--window X,Y,Z]``: the network for your own
deployment, checked against torch, with its preprocessing plan in ``FILE.plan.json``."""

from __future__ import annotations

import argparse

from medseg.cli._common import InOrder, add_input_option, add_output_option, require_output, window_size
from medseg.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the network to ONNX or TorchScript (with its preprocessing plan) for deployment",
        description="Write the network as ONNX or TorchScript: input a normalised window [B,1,X,Y,Z] float32, "
        "output logits [B,2,X,Y,Z]. The file is checked against torch on a random window (the largest "
        "logit difference is printed) before it is renamed into place, and the plan needed to preprocess "
        "(spacing, orientation, intensity normalisation, window) is written to FILE.plan.json and into the "
        "file (ONNX metadata 'medseg_plan'; TorchScript extra file 'medseg_plan.json'). ONNX needs medseg[onnx].",
    )
    p.add_argument("inputs", nargs="?", action=InOrder, metavar="CKPT", help="checkpoint (.pt) to export")
    add_input_option(p, "CKPT")
    p.add_argument("-m", "--model", default=None, metavar="CKPT",
                   help="checkpoint (.pt); default: the bundled lung-nodule model")
    add_output_option(p, "FILE", "exported model file (e.g. model.onnx or model.ts)", required=True)
    p.add_argument("--format", choices=["onnx", "torchscript"], default=None,
                   help="default: torchscript for .pt/.ts/.jit/.torchscript files, else onnx")
    p.add_argument("--window", type=window_size, default=None, metavar="X,Y,Z",
                   help="verification window (default: the model's inference window); the exported ONNX "
                        "takes any size divisible by the network strides")
    p.set_defaults(func=run)


def _checkpoint(args: argparse.Namespace) -> str | None:
    given = [*([args.model] if args.model else []), *getattr(args, "ordered_inputs", [])]
    if len(given) > 1:
        raise InputError(None, f"export takes one checkpoint, got {len(given)}: {' '.join(map(str, given))}")
    return str(given[0]) if given else None


def run(args: argparse.Namespace) -> int:
    from medseg.models.export import export_checkpoint

    out = require_output(args)
    checkpoint = _checkpoint(args)
    res = export_checkpoint(out, checkpoint, fmt=args.format, window=args.window)
    diff = "not checked (onnxruntime not installed)" if res.max_abs_diff is None else f"{res.max_abs_diff:.3g}"
    print(f"wrote {res.path} ({res.format}, window {'x'.join(map(str, res.window))}, "
          f"model {checkpoint or 'bundled'})")
    print(f"max |logit difference| vs torch on a random window: {diff}")
    print(f"preprocessing plan: {res.plan_path}")
    return 0
