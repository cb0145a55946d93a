"""SVD conv with trainable factors and singular values (Sharma et al., arXiv 2401.08014).

``decomposition="channel"``: ``W.reshape(kh*kw*C, N) = U diag(s) V^T``, run as a
``kh x kw`` conv ``C -> R`` (``U``) then a 1x1 conv ``R -> N`` (``diag(s) V^T``). MACs per
output pixel ``R*(kh*kw*C + N)``.

``decomposition="spatial"``: the ``(kh*C) x (kw*N)`` unfolding ``= U diag(s) V^T``, run as
a ``kh x 1`` conv ``C -> R`` then a ``1 x kw`` conv ``R -> N`` (Jaderberg et al. 2014);
strides, dilation and padding split per axis, so it is exact for all of them.

The singular values are their own weight (``singular_values``), so rank-pruning
regularizers (``singular_value_regularizer``, ``regularizers``) act on them alone;
``orthogonality`` adds ``orthogonality * ||G - I||_F^2 / R^2`` for the Gram matrix ``G`` of
each factor's rank-``R`` columns (``regularizers.Orthogonality``). ``training.RankPruning``
and ``training.set_svd_rank`` shrink ``rank`` during ``fit``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from .. import decompositions as dec
from ..cost import conv_output_length
from .base import FactorizedConv2D
from .regularizers import Orthogonality

__all__ = ["DECOMPOSITIONS", "SVDConv2D"]

DECOMPOSITIONS = ("channel", "spatial")


@keras.saving.register_keras_serializable(package="keras_eigenconv")
class SVDConv2D(FactorizedConv2D):
    """``Conv2D`` as trainable SVD factors of rank ``rank``.

    Weights: ``left_vectors`` ``U``, ``singular_values`` ``s (R,)`` and ``right_vectors``
    ``V``: ``(kh, kw, C, R)``, ``(R,)``, ``(1, 1, R, N)`` for ``"channel"`` and
    ``(kh, 1, C, R)``, ``(R,)``, ``(1, kw, R, N)`` for ``"spatial"``.
    ``kernel_regularizer``/``kernel_constraint`` apply to the singular vectors. From scratch
    the factors are the truncated SVD of a kernel drawn from ``kernel_initializer`` (so the
    vectors start orthonormal), rescaled to keep its norm.

    Args:
        filters: int, the number ``N`` of output filters.
        kernel_size: int or pair of ints ``(kh, kw)``.
        rank: int, the rank ``R``: at most ``min(kh*kw*C, filters)`` (``"channel"``) or
            ``min(kh*C, kw*filters)`` (``"spatial"``).
        decomposition: ``"channel"`` (a ``kh x kw`` conv ``C -> R``, then a 1x1 conv) or
            ``"spatial"`` (a ``kh x 1`` conv ``C -> R``, then a ``1 x kw`` conv).
        singular_value_regularizer: regularizer of ``singular_values`` alone (e.g.
            ``SingularValueL1`` or ``SingularValueHoyer``), or ``None``.
        orthogonality: float ``>= 0``, strength of the orthogonality penalty
            ``||G - I||_F^2 / R^2`` on both singular-vector factors (default 0: none).
        **kwargs: the other arguments of ``keras.layers.Conv2D`` and ``FactorizedConv2D``:
            ``strides``, ``padding``, ``data_format``, ``dilation_rate``, ``activation``,
            ``use_bias``, ``implementation``, the initializers, regularizers and
            constraints, ``seed`` and the base-layer arguments.

    Input shape:
        4D tensor ``(batch, H, W, C)``.

    Output shape:
        4D tensor ``(batch, H_out, W_out, filters)``.

    Raises:
        ValueError: when ``decomposition`` or ``orthogonality`` is invalid, or another
            argument is.

    Example:

    >>> conv = keras.layers.Conv2D(64, 3, padding="same")
    >>> conv.build((None, 32, 32, 16))
    >>> layer = SVDConv2D.from_conv2d(conv, rank=16, orthogonality=1e-3)
    >>> [tuple(w.shape) for w in layer.factors().values()]
    [(3, 3, 16, 16), (16,), (1, 1, 16, 64)]
    >>> layer.cost((32, 32, 16)).macs
    3407872
    """

    _scale_factor = "singular_values"
    data_statistics = ("response", "rows")
    refittable_output = True

    def __init__(
        self,
        filters,
        kernel_size,
        rank,
        decomposition="channel",
        singular_value_regularizer=None,
        orthogonality=0.0,
        **kwargs,
    ):
        super().__init__(filters, kernel_size, rank, **kwargs)
        if decomposition not in DECOMPOSITIONS:
            raise ValueError(
                f"{self._who}: decomposition must be one of {DECOMPOSITIONS}, got "
                f"{decomposition!r}."
            )
        self.decomposition = decomposition
        self.singular_value_regularizer = keras.regularizers.get(singular_value_regularizer)
        if isinstance(orthogonality, bool) or not float(orthogonality) >= 0.0:
            raise ValueError(
                f"{self._who}: orthogonality must be a float >= 0, got {orthogonality!r}."
            )
        self.orthogonality = float(orthogonality)

    @classmethod
    def method_options(cls, **kwargs):
        """``{"decomposition": ...}`` out of the constructor arguments (default ``"channel"``).

        Args:
            **kwargs: constructor keyword arguments.

        Returns:
            A dict with the ``decomposition`` entry.

        Raises:
            ValueError: when ``decomposition`` is not one of ``DECOMPOSITIONS``.
        """
        decomposition = kwargs.get("decomposition", "channel")
        if decomposition not in DECOMPOSITIONS:
            raise ValueError(
                f"SVDConv2D: decomposition must be one of {DECOMPOSITIONS}, got {decomposition!r}."
            )
        return {"decomposition": decomposition}

    def max_rank(self, in_channels: int) -> int:
        """``min(kh*kw*C, N)``, or ``min(kh*C, kw*N)`` for ``"spatial"``."""
        kh, kw = self.kernel_size
        if self.decomposition == "spatial":
            return min(kh * in_channels, kw * self.filters)
        return min(kh * kw * in_channels, self.filters)

    def factor_shapes(self, in_channels: int) -> dict:
        kh, kw = self.kernel_size
        r, n = self.rank, self.filters
        if self.decomposition == "spatial":
            return {
                "left_vectors": (kh, 1, in_channels, r),
                "singular_values": (r,),
                "right_vectors": (1, kw, r, n),
            }
        return {
            "left_vectors": (kh, kw, in_channels, r),
            "singular_values": (r,),
            "right_vectors": (1, 1, r, n),
        }

    def _factor_regularizer(self, name):
        if name == "singular_values":
            return self.singular_value_regularizer
        if self.orthogonality > 0.0:
            # rank axis: last for U (kh, kw, C, R), third for V (1, kw, R, N)
            return Orthogonality(
                self.orthogonality,
                rank_axis=-1 if name == "left_vectors" else 2,
                base=self.kernel_regularizer,
            )
        return self.kernel_regularizer

    def _factor_constraint(self, name):
        return None if name == "singular_values" else self.kernel_constraint

    def kernel_from_factors(self, factors):
        u, s, v = factors["left_vectors"], factors["singular_values"], factors["right_vectors"]
        if self.decomposition == "spatial":
            return ops.einsum("hcr,r,wrn->hwcn", u[:, 0], s, v[0])
        return ops.einsum("hwcr,r,rn->hwcn", u, s, v[0, 0])

    def factorized_call(self, inputs, training=None):
        (sh, sw), (dh, dw) = self.strides, self.dilation_rate
        # diag(s) folded into the smaller second factor
        v = ops.multiply(self.right_vectors, ops.reshape(self.singular_values, (1, 1, -1, 1)))
        if self.decomposition == "spatial":
            y = self._conv(inputs, self.left_vectors, strides=(sh, 1), dilation_rate=(dh, 1))
            return self._conv(y, v, strides=(1, sw), dilation_rate=(1, dw))
        y = self._conv(inputs, self.left_vectors)
        return ops.conv(y, v, padding="valid", data_format="channels_last")

    def op_macs(self, input_shape):
        h, w = self.out_hw(input_shape)
        c, r, n = int(input_shape[-1]), self.rank, self.filters
        kh, kw = self.kernel_size
        if self.decomposition == "spatial":
            # the kh x 1 stage runs at output height but input width
            w1 = conv_output_length(int(input_shape[2]), 1, 1, self.padding, 1)
            return [("conv", h * w1 * kh * c * r), ("conv", h * w * kw * r * n)]
        return [("conv", h * w * kh * kw * c * r), ("pointwise", h * w * r * n)]

    @classmethod
    def spectrum(cls, kernel, decomposition="channel", **options):
        """Squared singular values of the factored matrix.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            decomposition: ``"channel"`` (``W.reshape(kh*kw*C, N)``) or ``"spatial"`` (the
                ``(kh*C) x (kw*N)`` unfolding).
            **options: ignored.

        Returns:
            The energies, descending.
        """
        if decomposition == "spatial":
            return dec.svd_spatial_spectrum(kernel)
        return dec.svd_channel_spectrum(kernel)

    @classmethod
    def decompose(cls, kernel, rank, decomposition="channel", **options):
        fn = dec.svd_spatial_factors if decomposition == "spatial" else dec.svd_channel_factors
        u, s, v = fn(kernel, rank)
        return {"left_vectors": u, "singular_values": s, "right_vectors": v}

    @classmethod
    def vbmf_matrices(cls, kernel, decomposition="channel", **options):
        """The matrix that is factored.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            decomposition: ``"channel"`` or ``"spatial"``.
            **options: ignored.

        Returns:
            A one-element list: ``(kh*kw*C, N)``, or ``(kh*C, kw*N)`` for ``"spatial"``.
        """
        kh, kw, c, n = kernel.shape
        if decomposition == "spatial":
            return [np.transpose(kernel, (0, 2, 1, 3)).reshape(kh * c, kw * n)]
        return [kernel.reshape(kh * kw * c, n)]

    @classmethod
    def needed_statistics(cls, decomposition="channel", **options):
        """``("response",)`` for the channel SVD, ``("rows",)`` for the spatial one.

        Args:
            decomposition: ``"channel"`` or ``"spatial"``.
            **options: ignored.

        Returns:
            A tuple of statistic kinds.
        """
        return ("rows",) if decomposition == "spatial" else ("response",)

    @classmethod
    def decompose_with_data(cls, kernel, rank, statistics, decomposition="channel", **options):
        """Channel: the projection of the responses on their top-``R`` principal directions
        (exact minimizer of the response error); spatial: the unfolding whitened by the
        vertical-patch moments (``decompositions.svd_spatial_data_factors``).

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            rank: ``R``.
            statistics: ``{"response": (N, N)}`` or ``{"rows": (kh*C, kh*C)}``.
            decomposition: ``"channel"`` or ``"spatial"``.
            **options: ignored.

        Returns:
            The factors by weight name.
        """
        if decomposition == "spatial":
            u, s, v, _ = dec.svd_spatial_data_factors(kernel, statistics["rows"], rank)
        else:
            u, s, v, _ = dec.svd_channel_data_factors(kernel, statistics["response"], rank)
        return {"left_vectors": u, "singular_values": s, "right_vectors": v}

    @classmethod
    def data_spectrum(cls, kernel, statistics, decomposition="channel", **options):
        """The response energies of ``decompose_with_data`` (descending).

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            statistics: as for ``decompose_with_data``.
            decomposition: ``"channel"`` or ``"spatial"``.
            **options: ignored.

        Returns:
            A 1-D array of energies.
        """
        if decomposition == "spatial":
            return dec.svd_spatial_data_factors(kernel, statistics["rows"], 1)[3]
        return dec.svd_channel_data_factors(kernel, statistics["response"], 1)[3]

    def set_output_projection(self, kernel, bias):
        """Set the second factor to ``kernel`` (``(1, 1, R, N)`` or ``(1, kw, R, N)``): its
        rank components are normalized into ``right_vectors`` and their norms become the
        ``singular_values``; ``bias`` replaces the bias when given.

        Args:
            kernel: the new second-factor kernel.
            bias: the new bias ``(filters,)``, or ``None``.
        """
        k = np.asarray(kernel, np.float64)
        norms = np.sqrt((k**2).sum(axis=(0, 1, 3)))
        norms = np.where(norms > 0, norms, 1.0)
        self.set_factors(
            {"right_vectors": k / norms.reshape(1, 1, -1, 1), "singular_values": norms}
        )
        if bias is not None and self.use_bias:
            self.bias.assign(np.asarray(bias, np.float32))

    def inference_layers(self) -> list[keras.layers.Layer]:
        """The equivalent built plain-Keras layers (inference).

        Returns:
            ``[Conv2D, Conv2D]``: a ``Conv2D`` ``C -> R`` (``U``; ``kh x kw``, or ``kh x 1``
            for ``"spatial"``) then a ``Conv2D`` ``R -> N`` (``diag(s) V^T``; 1x1, or
            ``1 x kw``) holding the bias and activation.

        Raises:
            ValueError: when the layer is not built.
        """
        if not self.built:
            raise ValueError(f"{self._who}.inference_layers: build the layer first.")
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        u = ops.convert_to_numpy(self.left_vectors)
        v = ops.convert_to_numpy(self.right_vectors) * ops.convert_to_numpy(
            self.singular_values
        ).reshape(1, 1, -1, 1)
        if self.decomposition == "spatial":
            first = dict(kernel_size=(kh, 1), strides=(sh, 1), dilation_rate=(dh, 1))
            second = dict(kernel_size=(1, kw), strides=(1, sw), dilation_rate=(1, dw))
            second["padding"] = self.padding
        else:
            first = dict(kernel_size=(kh, kw), strides=(sh, sw), dilation_rate=(dh, dw))
            second = dict(kernel_size=(1, 1), padding="valid")
        a = keras.layers.Conv2D(
            self.rank,
            padding=self.padding,
            use_bias=False,
            name=f"{self.name}_left",
            dtype=self.dtype_policy,
            **first,
        )
        a.build((None, None, None, u.shape[2]))
        a.kernel.assign(u)
        b = keras.layers.Conv2D(
            self.filters,
            activation=self.activation,
            use_bias=self.use_bias,
            name=f"{self.name}_right",
            dtype=self.dtype_policy,
            **second,
        )
        b.build((None, None, None, self.rank))
        b.kernel.assign(v)
        if self.use_bias:
            b.bias.assign(ops.convert_to_numpy(self.bias))
        return [a, b]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "decomposition": self.decomposition,
                "singular_value_regularizer": keras.saving.serialize_keras_object(
                    self.singular_value_regularizer
                ),
                "orthogonality": self.orthogonality,
            }
        )
        return config
