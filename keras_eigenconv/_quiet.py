"""Quiet TensorFlow, absl and LiteRT logs in the ``keras-eigenconv`` command-line process only.

A library must not change process-wide state, so importing ``keras_eigenconv`` changes
nothing here: ``silence_if_cli()`` (called first thing by the package ``__init__``, before
TensorFlow is imported) acts only when this process *is* the command line, i.e.

- ``sys.argv[0]`` is the ``keras-eigenconv`` console script, or
- Python was started as ``python -m keras_eigenconv`` (or ``-m keras_eigenconv.cli...``):
  ``sys.argv[0] == "-m"`` while the package is being located and ``sys.orig_argv`` names
  the module,

and ``--verbose`` is not among the arguments. It has to run that early because
``python -m keras_eigenconv`` imports the package (and so TensorFlow) before any CLI code.

What it does then (``silence``):

- ``TF_CPP_MIN_LOG_LEVEL=3`` in this process's environment (TensorFlow's C++ log level);
- the Python loggers ``tensorflow`` and ``absl`` at ``ERROR``; warnings issued from
  ``tensorflow``, ``keras``, ``absl`` and ``ai_edge_litert`` ignored (the package's own
  warnings still show, each as one line ``keras-eigenconv: warning: ...``);
- file descriptor 2 redirected to an anonymous temporary file, and ``sys.stderr`` pointed at
  a duplicate of the original descriptor: lines that C++ writes to fd 2 before absl's log
  is initialized (``WARNING: All log messages before absl::InitializeLog()``, oneDNN,
  ``cudart``, ``cuInit``), the converter's ``fully_quantize: ...`` and "Statistics for
  quantized inputs" lines and LiteRT's "Created TensorFlow Lite XNNPACK delegate" go to the
  file, while Python's own ``sys.stderr`` writes (progress, errors, tracebacks) reach the
  terminal. ``restore`` puts fd 2 and ``sys.stderr`` back (``cli.main`` calls it when the
  command is done; ``atexit`` as a fallback).

The price: a C++ crash message (an abort in TensorFlow) is lost too; run with ``--verbose``
to see everything.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import sys
import tempfile
import warnings

__all__ = [
    "CLI_NAMES",
    "NOISY_MODULES",
    "is_cli_process",
    "is_silenced",
    "native_log",
    "quiet_requested",
    "restore",
    "silence",
    "silence_if_cli",
]

CLI_NAMES = ("keras-eigenconv", "keras-eigenconv.exe", "keras-eigenconv-script.py")
NOISY_MODULES = r"(tensorflow|keras|absl|ai_edge_litert|tf_keras|google\.protobuf)(\.|$)"

_STATE: dict = {}


def _module_after_dash_m(orig_argv: list[str]) -> str | None:
    for i, arg in enumerate(orig_argv[1:], start=1):
        if arg == "-m":
            return orig_argv[i + 1] if i + 1 < len(orig_argv) else None
        if arg.startswith("-m") and not arg.startswith("--"):
            return arg[2:]
        if arg == "-c" or not arg.startswith("-"):  # a script or -c: not -m
            return None
    return None


def is_cli_process(argv: list[str] | None = None, orig_argv: list[str] | None = None) -> bool:
    """Whether this process is the ``keras-eigenconv`` command line.

    Args:
        argv: ``sys.argv`` when None.
        orig_argv: ``sys.orig_argv`` (the interpreter's own arguments) when None.

    Returns:
        True for the console script (``argv[0]`` named ``keras-eigenconv``) and for
        ``python -m keras_eigenconv`` / ``-m keras_eigenconv.cli...`` while the package is
        being located (``argv[0] == "-m"``); False otherwise (any library use).
    """
    argv = sys.argv if argv is None else argv
    if not argv:
        return False
    if os.path.basename(str(argv[0])) in CLI_NAMES:
        return True
    if argv[0] != "-m":
        return False
    orig = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    module = _module_after_dash_m(list(orig)) or ""
    return module == "keras_eigenconv" or module.startswith(
        ("keras_eigenconv.__main__", "keras_eigenconv.cli")
    )


def quiet_requested(argv: list[str] | None = None) -> bool:
    """Whether the command line asks for quiet output (no ``--verbose`` among its arguments).

    Args:
        argv: ``sys.argv`` when None.

    Returns:
        False when ``--verbose`` is one of ``argv[1:]`` (before a ``--``), else True.
    """
    argv = sys.argv if argv is None else argv
    args = list(argv[1:])
    if "--" in args:
        args = args[: args.index("--")]
    return "--verbose" not in args


def is_silenced() -> bool:
    """Whether ``silence`` is in effect in this process.

    Returns:
        True between ``silence()`` and ``restore()``.
    """
    return bool(_STATE)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as one line, without the source line (the command line's own format)."""
    return f"keras-eigenconv: warning: {' '.join(str(message).split())}\n"


def silence() -> None:
    """Silence TensorFlow, absl and LiteRT output in this process (see the module docstring).

    Only the command line calls this; it changes process-wide state (environment, loggers,
    warnings filters, file descriptor 2, ``sys.stderr``). A second call does nothing.
    """
    if _STATE:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    for name in ("tensorflow", "absl"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        # a filter too: absl and TensorFlow may set their logger's level again on import
        logger.addFilter(_errors_only)
    warnings.filterwarnings("ignore", module=NOISY_MODULES)
    warnings.formatwarning = _one_line_warning
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no usable fd 2: nothing to redirect
        _STATE["fd"] = None
        return
    log = tempfile.TemporaryFile(prefix="keras_eigenconv_native_log_")
    os.dup2(log.fileno(), 2)
    original = sys.stderr
    stream = io.TextIOWrapper(
        io.FileIO(saved, "w", closefd=False),
        encoding=getattr(original, "encoding", None) or "utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    _STATE.update(fd=saved, log=log, original=original, stream=stream)
    sys.stderr = stream
    atexit.register(restore)


def native_log() -> str:
    """What C++ wrote to file descriptor 2 while ``silence`` was in effect.

    Returns:
        The captured text (empty when nothing was captured).
    """
    log = _STATE.get("log")
    if log is None or log.closed:
        return ""
    log.flush()
    log.seek(0)
    return log.read().decode("utf-8", "replace")


def restore() -> None:
    """Undo the file descriptor redirection of ``silence`` (fd 2 and ``sys.stderr``).

    The environment, logger levels and warnings filters stay (TensorFlow has read them).
    A second call does nothing.
    """
    if not _STATE:
        return
    saved = _STATE.get("fd")
    if saved is not None:
        try:
            _STATE["stream"].flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)
        if sys.stderr is _STATE["stream"]:
            sys.stderr = _STATE["original"]
        os.close(saved)
        _STATE["log"].close()
    _STATE.clear()


def silence_if_cli() -> bool:
    """``silence()`` when this process is the command line without ``--verbose``.

    Returns:
        Whether it silenced the process (False for every library use).
    """
    if is_cli_process() and quiet_requested():
        silence()
        return True
    return False
