"""The ``keras-eigenconv`` command line.

Each feature module that has a command defines ``register_cli(subparsers)``, which adds its
sub-command(s) with ``set_defaults(func=...)``; ``func(args)`` returns the exit code. Add a
module to ``COMMAND_MODULES`` to add its commands.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES = ("surgery", "export", "analysis", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-eigenconv",
        description="Make Keras CNNs smaller and faster with low-rank and structured layers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"keras_eigenconv.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"keras_eigenconv.{name}":
                continue  # feature not present in this version
            raise
        register = getattr(module, "register_cli", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
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
