"""The ``keras-eigenconv`` command line (also ``python -m keras_eigenconv``).

Every failure is one line on stderr (``keras-eigenconv COMMAND: error: ...``, naming the
file and the problem) with a non-zero exit status: 2 for bad arguments, 1 for everything
else; ``--debug`` shows the full traceback instead.

Quiet by default: in the command-line process TensorFlow, absl, CUDA/oneDNN and LiteRT
converter log lines are not shown (``_quiet``, set up by the package ``__init__`` before
TensorFlow is imported, and undone when the command is done); ``--verbose`` shows them.
"""

from __future__ import annotations

import argparse
import sys

from .. import _quiet

__all__ = ["build_parser", "main"]

_MAX_MESSAGE = 500
_VERBOSE_HELP = "show TensorFlow, absl and LiteRT converter log lines (hidden by default)"


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(err: BaseException) -> str:
    """The error as one line: its message with whitespace collapsed, the file named."""
    if isinstance(err, KeyError) and err.args:
        text = str(err.args[0])
    else:
        text = str(err)
    if isinstance(err, OSError) and err.strerror:  # not "[Errno 20] ..."
        text = err.strerror
        if err.filename and str(err.filename) not in text:
            text = f"{err.filename}: {text}"
    text = " ".join(text.split()) or type(err).__name__
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3].rstrip() + "... (--debug for all of it)"
    return text


def build_parser() -> argparse.ArgumentParser:
    """Build the ``keras-eigenconv`` argument parser.

    Returns:
        The parser, with every command of ``cli.commands.COMMANDS``.
    """
    from .commands import COMMANDS

    parser = _Parser(
        prog="keras-eigenconv",
        description="Make Keras CNNs smaller and faster with low-rank and structured layers.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():  # --debug also after the command
        command.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show the full traceback of an error",
        )
        command.add_argument(
            "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``keras-eigenconv`` command.

    Any error of the command is printed as one line on stderr, ``keras-eigenconv
    COMMAND: error: MESSAGE`` (the message names the file and the problem), and gives
    exit status 1; with ``--debug`` the exception propagates (full traceback). Bad
    arguments exit with status 2 after a one-line message (argparse's ``SystemExit``).

    Args:
        argv: The command-line arguments, ``sys.argv[1:]`` when None.

    Returns:
        The command's exit code: 0 on success, 1 after a one-line error, 2 (after the
        help) when no command is given, 130 when interrupted.
    """
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            if args.debug:
                raise
            print(f"keras-eigenconv {args.command}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # noqa: BLE001 - one line for every failure, unless --debug
            if args.debug:
                raise
            hint = " (--verbose shows TensorFlow's log)" if _quiet.is_silenced() else ""
            print(
                f"keras-eigenconv {args.command}: error: {_one_line(err)}{hint}",
                file=sys.stderr,
            )
            return 1
    finally:
        _quiet.restore()  # fd 2 and sys.stderr back (only if this process silenced them)


if __name__ == "__main__":
    sys.exit(main())
