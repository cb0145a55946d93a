"""Imported first by the package ``__init__``, before TensorFlow: quiets the logs of the
``keras-eigenconv`` command-line process (``_quiet.silence_if_cli``). For any library use
(any other process) importing it changes nothing.
"""

from ._quiet import silence_if_cli

__all__: list[str] = []

silence_if_cli()
