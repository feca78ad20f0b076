"""Command-line interface: argument parsing and exit codes only; the work is in the Python API.

Each subcommand lives in its own module of this package exposing ``register(subparsers)``, which
adds a parser whose ``func`` default takes the parsed arguments and returns an exit code. Modules
are discovered, so adding a command never means editing this file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from medseg import __version__
from medseg.errors import InputError

#: Preferred order of subcommands in ``--help``; any other command module follows.
_ORDER: tuple[str, ...] = ("infer", "train", "train_fp", "evaluate", "measure", "batch", "export", "info")


def command_modules() -> list[str]:
    """Names of the subcommand modules in this package, in help order."""
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medseg",
        description="Volumetric medical image segmentation: lung nodules in chest CT.",
    )
    parser.add_argument("--version", action="version", version=f"medseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        importlib.import_module(f"medseg.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medseg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if not getattr(args, "quiet", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        if args.debug:
            raise
        print(f"medseg: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("medseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
