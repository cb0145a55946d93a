"""The ``keras-eigenconv`` command line (also ``python -m keras_eigenconv``)."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Build the ``keras-eigenconv`` argument parser.

    Returns:
        The parser, with every command of ``cli.commands.COMMANDS``.
    """
    from .commands import COMMANDS

    parser = argparse.ArgumentParser(
        prog="keras-eigenconv",
        description="Make Keras CNNs smaller and faster with low-rank and structured layers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``keras-eigenconv`` command.

    A ``ValueError``, ``FileNotFoundError`` or ``KeyError`` of the command is printed as a
    one-line error on stderr.

    Args:
        argv: The command-line arguments, ``sys.argv[1:]`` when None.

    Returns:
        The command's exit code: 1 with a one-line error on bad input, 2 (after the help)
        when no command is given.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"keras-eigenconv {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
