"""The ``vmunet`` command: parses arguments and hands over to library functions.

Each subcommand lives in ``vmunet/cli/<name>.py`` and exposes
``add_parser(subparsers)``, which registers its parser and sets
``func=run`` (a callable taking the parsed namespace and returning an exit code).

Example:
    $ vmunet --version
    $ vmunet segment scans/ --checkpoint best.pt --output masks/
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

# Order is the order shown in --help.
SUBCOMMANDS = ("demo", "plan", "train", "test", "compare", "segment", "evaluate", "prepare", "export")
_MODULE_OF = {"test": "train"}

EPILOG = """examples:
  vmunet demo --output demo_output          # train, evaluate and segment the bundled demo data
  vmunet train configs/isic17.yaml --output runs/isic17
  vmunet test configs/isic17.yaml --checkpoint runs/isic17/best.pt
  vmunet compare demo --models vmunet_tiny,monai_basicunet_2d --output runs/compare
  vmunet segment scans/ --checkpoint best.pt --output masks/
  vmunet evaluate --pred masks/ --label labels/ --protocol standard
  vmunet prepare synapse --raw Abdomen/RawData --output data/synapse
  vmunet plan nnUNet_raw/Dataset001_Brain --output plans/brain.yaml
  vmunet export best.pt --format onnx --output best.onnx
"""


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand registered."""
    from vmunet import __version__

    parser = argparse.ArgumentParser(
        prog="vmunet",
        description="VM-UNet medical image segmentation: train, test, segment, evaluate, prepare data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vmunet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen = set()
    for name in SUBCOMMANDS:
        module = _MODULE_OF.get(name, name)
        if module in seen:
            continue
        seen.add(module)
        mod = importlib.import_module(f"vmunet.cli.{module}")
        mod.add_parser(sub)
    return parser


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 1 some inputs failed, 2 user error)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from vmunet.errors import VmunetUserError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except VmunetUserError as exc:
        print(f"vmunet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vmunet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
