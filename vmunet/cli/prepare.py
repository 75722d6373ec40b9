"""``vmunet prepare``: check a public download and convert it into a fast training layout."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]

EPILOG = """examples:
  vmunet prepare isic2017 --raw downloads/isic2017 --output data/isic2017
  vmunet prepare isic2018 --raw downloads/isic2018 --output data/isic2018 --size 256
  vmunet prepare synapse --raw Abdomen/RawData/Training --output data/synapse

The raw folder is only read. Every problem of the download is listed in one pass;
nothing is converted until there are none. Re-running skips what is done.
With --skip-invalid, files with problems (e.g. a truncated JPEG) are skipped instead:
every good pair is converted and each skipped file is listed with its reason, on the
console and in OUTPUT/skipped.txt.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="check a public download (ISIC 2017/2018, Synapse) and convert it once",
        description="Check a public download (counts, pairs, readable files, mask values) and convert it "
        "into a fast, memory-mapped training layout with the published splits.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=["isic2017", "isic2018", "synapse"], help="which data set")
    p.add_argument("--raw", required=True, help="the download folder (never modified)")
    p.add_argument("--output", required=True, help="where the prepared layout is written")
    p.add_argument("--size", type=int, default=None, help="ISIC: side of the resized images (default 256)")
    p.add_argument(
        "--no-count-check",
        action="store_true",
        help="do not compare image/case counts with the official numbers (for subsets)",
    )
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: up to 4)")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="convert every good pair, skip unreadable / invalid files and list them (OUTPUT/skipped.txt) "
        "instead of stopping (default: strict)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vmunet.data.prepare import prepare_dataset
    from vmunet.errors import VmunetUserError

    if args.size is not None and args.size < 16:
        raise VmunetUserError(f"--size must be >= 16, got {args.size}")
    if args.workers is not None and args.workers < 1:
        raise VmunetUserError(f"--workers must be >= 1, got {args.workers}")
    path = prepare_dataset(
        args.kind,
        args.raw,
        args.output,
        size=args.size,
        check_counts=not args.no_count_check,
        workers=args.workers,
        progress=lambda msg: print(msg, flush=True),
        skip_invalid=args.skip_invalid,
    )
    print(f"done: {path}")
    return 0
