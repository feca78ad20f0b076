"""Options shared by the commands, so every command spells them the same way.

- inputs: positional paths and/or ``-i/--input PATH`` (repeatable), which combine;
- ``-o/--output``: the one long name of every command's output (older spellings stay as hidden
  aliases so existing scripts keep working);
- the inference options of ``medseg infer``, which ``medseg batch`` takes too.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from medseg.errors import InputError

#: InferenceSettings fields the shared inference options set (None = not given on the command line)
INFERENCE_OPTIONS = ("model", "device", "precision", "runtime", "tta", "overlap", "window", "min_confidence", "save_probabilities",
                     "crf", "lung_mask", "on_no_lung", "masses", "preview", "output_format")


class InOrder(argparse.Action):
    """Keeps every input, positional or ``-i``, in ``namespace.ordered_inputs`` in the order given
    on the command line (so ``measure -i SCAN MASK`` means what it says)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = [v for v in (values if isinstance(values, list) else [values]) if v is not None]
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), *items])
        namespace.ordered_inputs = [*getattr(namespace, "ordered_inputs", []), *items]


def add_input_option(p: argparse.ArgumentParser, metavar: str = "PATH") -> None:
    """``-i/--input PATH``, repeatable; joins the positional inputs (use :class:`InOrder` for those)."""
    p.add_argument("-i", "--input", dest="input_options", action=InOrder, default=[], metavar=metavar,
                   help="an input, as the positional ones (repeatable; the two combine, in order)")


def gather_inputs(args: argparse.Namespace, what: str, count: int | None = None) -> list[str]:
    """The inputs, positional and ``-i``, in command-line order; ``count`` = exactly that many."""
    found = [str(p) for p in getattr(args, "ordered_inputs", [])]
    if not found:
        raise InputError(None, f"no input given: name {what} (positionally or with -i)")
    if count is not None and len(found) != count:
        raise InputError(None, f"expected {what} ({count} inputs), got {len(found)}: {' '.join(found)}")
    return found


def add_output_option(p: argparse.ArgumentParser, metavar: str, help: str, aliases: tuple[str, ...] = (),
                      required: bool = False) -> None:
    """``-o/--output``, plus older spellings as hidden aliases (``required`` is checked by
    :func:`require_output` when there are aliases, since argparse cannot tie them)."""
    p.add_argument("-o", "--output", metavar=metavar, help=help, required=required and not aliases)
    for old in aliases:
        p.add_argument(old, dest="output", help=argparse.SUPPRESS)


def require_output(args: argparse.Namespace) -> str:
    """The ``-o/--output`` value, or an InputError saying it is needed."""
    if not args.output:
        raise InputError(None, "no output given: use -o/--output")
    return str(args.output)


def device_name(text: str) -> str:
    """argparse type: auto, cpu, cuda or cuda:N."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def _overlap(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"overlap must be in [0, 1), got {text}")
    return value


def window_size(text: str) -> tuple[int, int, int]:
    """argparse type: ``X,Y,Z`` (or ``XxYxZ``) positive voxel counts."""
    try:
        size = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) <= 0:
        raise argparse.ArgumentTypeError(f"expected X,Y,Z (three positive integers), got {text!r}")
    return size  # type: ignore[return-value]


def _unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"min-confidence must be in [0, 1], got {text}")
    return value


def add_inference_options(p: argparse.ArgumentParser, exit_no_lung: int) -> None:
    """The options of ``medseg infer`` (also ``medseg batch``); each defaults to None = not given."""
    from medseg.io.writers import OUTPUT_FORMATS

    p.add_argument("--model", default=None, help="checkpoint (.pt); default: the bundled lung-nodule model")
    p.add_argument("--device", type=device_name, default=None, metavar="auto|cpu|cuda|cuda:N",
                   help="device for inference (default auto: CUDA when available)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="network precision (default: the model's): auto = bf16 where the CPU (AVX512_BF16/AMX) "
                        "or GPU runs it natively, else fp32; fp16 is for CUDA")
    p.add_argument("--runtime", choices=["torch", "onnxruntime", "openvino"], default=None,
                   help="what runs the network (default torch); onnxruntime (fp32) and openvino (fp32/bf16) run "
                        "on the CPU and need medseg[onnx] / medseg[openvino]")
    p.add_argument("--tta", action="store_true", default=None, help="average over flipped copies (8x slower)")
    p.add_argument("--overlap", type=_overlap, default=None,
                   help="sliding-window overlap in [0, 1) (default: the model's, 0.5); lower is faster but "
                        "changes the masks")
    p.add_argument("--window", type=window_size, default=None, metavar="X,Y,Z",
                   help="sliding-window size in plan voxels (default: the model's training patch); must be "
                        "divisible by the network's strides")
    p.add_argument("--min-confidence", type=_unit, default=None,
                   help="drop nodules whose confidence (the model's candidate classifier, else the mean "
                        "probability) is below this, in [0, 1] (default: the model's; 0 keeps every candidate)")
    p.add_argument("--save-probabilities", action="store_true", default=None,
                   help="also write <case>_probabilities.<format>")
    crf = p.add_mutually_exclusive_group()
    crf.add_argument("--crf", dest="crf", action="store_true", default=None, help="refine with a 3D dense CRF")
    crf.add_argument("--no-crf", dest="crf", action="store_false", help="no CRF refinement")
    p.add_argument("--crop-mode", dest="lung_mask", action="store_false", default=None,
                   help="input is a nodule crop, not a whole chest CT: no lung mask, the whole image is searched")
    p.add_argument("--on-no-lung", choices=["fail", "search_body"], default=None,
                   help="a CT with no plausible lung (under 100 mL): 'fail' reports it (status no_lung, "
                        f"exit code {exit_no_lung} for infer, no nodule search; default) or 'search_body' "
                        "searches the whole image instead and says so")
    p.add_argument("--no-masses", dest="masses", action="store_false", default=None,
                   help="skip the coarse second pass that finds masses of 30-100 mm")
    p.add_argument("--no-preview", dest="preview", action="store_false", default=None,
                   help="do not write the preview PNG")
    p.add_argument("--format", dest="output_format", choices=OUTPUT_FORMATS, default=None,
                   help="format of the image outputs (nodule labels, lung mask, probabilities; default nii.gz)")


def inference_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The InferenceSettings fields given on the command line (the others keep their defaults)."""
    return {k: getattr(args, k) for k in INFERENCE_OPTIONS if getattr(args, k, None) is not None}
