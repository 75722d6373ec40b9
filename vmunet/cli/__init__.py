"""Command-line shells over the library; each subcommand lives in its own module."""

__all__ = ["main"]


def main(argv=None) -> int:  # pragma: no cover - thin re-export
    from vmunet.cli.main import main as _main

    return _main(argv)
