"""``vmunet prepare``: placeholder until its issue lands."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("prepare", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vmunet.errors import VmunetUserError

    raise VmunetUserError("'vmunet prepare' is not implemented yet")
