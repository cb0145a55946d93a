"""``python -m keras_eigenconv``: the ``keras-eigenconv`` command line."""

import sys

from .cli import main

sys.exit(main())
