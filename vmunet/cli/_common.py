"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse

__all__ = ["add_set_argument"]


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """Add ``--set KEY=VALUE ...`` (collected into ``args.overrides``) to ``parser``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=help,
    )
