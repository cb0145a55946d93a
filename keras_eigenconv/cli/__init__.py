"""The command line: ``keras-eigenconv COMMAND`` (``python -m keras_eigenconv COMMAND``).

Every command is in ``commands`` over the one model loader in ``loader``. No other module
of the package imports this one.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
