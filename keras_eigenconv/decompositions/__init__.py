"""Every decomposition of the package, in one place (NumPy, float64).

Layers call these from ``from_conv2d``/``from_dense``; surgery and analysis call them to
choose ranks. One module per family of maths:

- ``matrix``: DeCEF, BasisConv and SVD factorizations, energy and entropy ranks.
- ``tensor``: TT-SVD (TT-matrix, TT-conv, naive TT), Tucker-2, CP, VBMF rank.
- ``structured``: SSC patterns and projections.
- ``data_aware``: factorizations that minimize the error of a layer's responses on data
  (response projection, whitened low rank, least-squares refit).

Conventions: a ``Conv2D`` kernel has the Keras layout ``(kh, kw, C, N)``. A ``*_spectrum``
function returns the energies (squared singular values, descending) that each extra rank
keeps, so ``sum(spectrum[:r]) / sum(spectrum) = 1 - relative_error(r) ** 2``.
"""

from .data_aware import *  # noqa: F401,F403
from .data_aware import __all__ as _data_aware_all
from .matrix import *  # noqa: F401,F403
from .matrix import __all__ as _matrix_all
from .structured import *  # noqa: F401,F403
from .structured import __all__ as _structured_all
from .tensor import *  # noqa: F401,F403
from .tensor import __all__ as _tensor_all

__all__ = list(_matrix_all) + list(_tensor_all) + list(_structured_all) + list(_data_aware_all)
