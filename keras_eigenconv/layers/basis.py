"""BasisConv: fixed basis filters + learned 1x1 combination (Tayyab & Mahalanobis, 1906.04509).

A conv with ``M`` basis filters ``F (kh, kw, C, M)`` (stride, padding and dilation belong
here), an optional BatchNorm, then a 1x1 conv ``B (1, 1, M, N)`` holding the learned weights
and the bias. Learned weights ``M*N`` (``+ M*kh*kw*C`` with ``trainable_basis``); MACs per
output pixel ``M*(kh*kw*C + N)``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from .. import decompositions as dec
from .base import FactorizedConv2D

__all__ = ["BasisConv2D"]


@keras.saving.register_keras_serializable(package="keras_eigenconv")
class BasisConv2D(FactorizedConv2D):
    """``Conv2D`` expressed on ``rank = M`` basis filters (BasisConv).

    Weights: ``basis (kh, kw, C, M)``, a conv ``C -> M`` that holds the strides, padding and
    dilation, and ``combination (1, 1, M, N)``, a 1x1 conv ``M -> N`` with the bias.

    From scratch the basis is random orthogonal: the QR of a Gaussian matrix drawn from the
    layer's ``SeedGenerator(seed)``. ``from_conv2d`` uses the SVD of the filter matrix
    ``H = W.reshape(kh*kw*C, N).T`` and is exact at ``M = rank(H)`` (with ``batch_norm``,
    exact in inference mode: the BatchNorm starts as the identity).

    Args:
        filters: int, the number ``N`` of output filters.
        kernel_size: int or pair of ints ``(kh, kw)``.
        rank: int, the number ``M`` of basis filters, at most ``min(filters, kh*kw*C)``.
        trainable_basis: bool; ``False`` (default): the basis is fixed (non-trainable
            weights) and only the 1x1 weights learn, as in the paper; ``True`` follows the
            author's later code.
        batch_norm: bool; ``True`` puts a ``BatchNormalization`` between the two stages, and
            the layer then always runs factorized (``implementation="dense"`` and
            ``training_implementation="dense"`` are refused).
        **kwargs: the other arguments of ``keras.layers.Conv2D`` and ``FactorizedConv2D``:
            ``strides``, ``padding``, ``data_format``, ``dilation_rate``, ``activation``,
            ``use_bias``, ``implementation``, the initializers, regularizers and
            constraints, ``seed`` and the base-layer arguments.

    Input shape:
        4D tensor ``(batch, H, W, C)``.

    Output shape:
        4D tensor ``(batch, H_out, W_out, filters)``.

    Raises:
        ValueError: when ``batch_norm`` is combined with ``implementation="dense"`` or
            ``training_implementation="dense"``, or another argument is invalid.

    Example:

    >>> conv = keras.layers.Conv2D(64, 3, padding="same")
    >>> conv.build((None, 32, 32, 16))
    >>> layer = BasisConv2D.from_conv2d(conv, rank=32)
    >>> layer.cost((32, 32, 16))
    Cost(params=2112, fixed_params=4608, macs=6815744)
    """

    _scale_factor = "combination"
    data_statistics = ("response",)
    refittable_output = True
    _output_factor = "combination"

    def __init__(
        self, filters, kernel_size, rank, trainable_basis=False, batch_norm=False, **kwargs
    ):
        super().__init__(filters, kernel_size, rank, **kwargs)
        self.trainable_basis = bool(trainable_basis)
        self.batch_norm = bool(batch_norm)
        if self.batch_norm and "dense" in (self.implementation, self.training_implementation):
            arg = "implementation" if self.implementation == "dense" else "training_implementation"
            raise ValueError(
                f"{self._who}: {arg}='dense' cannot run a BatchNorm between the "
                "stages; use 'factorized' or 'auto' (fold it for inference with to_conv2d)."
            )
        self.bn = (
            keras.layers.BatchNormalization(axis=-1, name="bn", dtype=self.dtype_policy)
            if self.batch_norm
            else None
        )

    def max_rank(self, in_channels: int) -> int:
        """``min(filters, kh*kw*in_channels)``."""
        kh, kw = self.kernel_size
        return min(self.filters, kh * kw * in_channels)

    def factor_shapes(self, in_channels: int) -> dict:
        kh, kw = self.kernel_size
        return {
            "basis": (kh, kw, in_channels, self.rank),
            "combination": (1, 1, self.rank, self.filters),
        }

    def _factor_trainable(self, name: str) -> bool:
        return name != "basis" or self.trainable_basis

    def _build_extra(self, in_channels: int) -> None:
        if self.bn is not None:
            self.bn.build((None, None, None, self.rank))

    def _resolve_implementation(self, input_shape, training: bool = False) -> str:
        if self.batch_norm:
            return "factorized"
        return super()._resolve_implementation(input_shape, training)

    def param_counts(self, in_channels: int):
        learned, fixed = super().param_counts(in_channels)
        if self.bn is not None:
            learned += 2 * self.rank
            fixed += 2 * self.rank
        return learned, fixed

    def initial_factors(self, drawn_kernel):
        kh, kw, c, n = drawn_kernel.shape
        g = keras.random.normal((kh * kw * c, self.rank), seed=self.seed_generator, dtype="float32")
        q, r = np.linalg.qr(np.asarray(ops.convert_to_numpy(g), np.float64))
        q = q * np.sign(np.diag(r))  # Haar-distributed orthonormal columns
        comb = q.T @ drawn_kernel.reshape(kh * kw * c, n)
        return {
            "basis": q.reshape(kh, kw, c, self.rank),
            "combination": comb.reshape(1, 1, self.rank, n),
        }

    def kernel_from_factors(self, factors):
        return ops.einsum("hwcm,mn->hwcn", factors["basis"], factors["combination"][0, 0])

    def factorized_call(self, inputs, training=None):
        y = self._conv(inputs, self.basis)
        if self.bn is not None:
            y = self.bn(y, training=training)
        return ops.conv(y, self.combination, padding="valid", data_format="channels_last")

    def op_macs(self, input_shape):
        h, w = self.out_hw(input_shape)
        c, m = int(input_shape[-1]), self.rank
        kh, kw = self.kernel_size
        return [("conv", h * w * kh * kw * c * m), ("pointwise", h * w * m * self.filters)]

    @classmethod
    def spectrum(cls, kernel, **options):
        """Squared singular values of the filter matrix (``basis_spectrum``).

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            **options: ignored.

        Returns:
            ``min(kh*kw*C, N)`` energies, descending.
        """
        return dec.basis_spectrum(kernel)

    @classmethod
    def decompose(cls, kernel, rank, **options):
        f, b = dec.basis_factors(kernel, rank)
        return {"basis": f, "combination": b}

    @classmethod
    def vbmf_matrices(cls, kernel, **options):
        """The filter matrix ``W.reshape(kh*kw*C, N)``.

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            **options: ignored.

        Returns:
            A one-element list.
        """
        kh, kw, c, n = kernel.shape
        return [kernel.reshape(kh * kw * c, n)]

    @classmethod
    def from_conv2d(cls, conv, rank=None, energy=None, implementation="auto", name=None, **kwargs):
        """Build a ``BasisConv2D`` from a built ``Conv2D`` by the SVD of its filter matrix.

        As ``FactorizedConv2D.from_conv2d``; with ``batch_norm=True`` the BatchNorm is set to
        the identity in inference mode (``sqrt(moving_variance + epsilon) = 1``).

        Args:
            conv: a built, channels-last, ungrouped ``keras.layers.Conv2D``.
            rank: the number ``M`` of basis filters, or ``None``.
            energy: the share of the kernel's squared Frobenius norm to keep, in ``(0, 1]``,
                or ``None``.
            implementation: ``"auto"``, ``"factorized"`` or ``"dense"``.
            name: the layer's name (default: the source's).
            **kwargs: ``trainable_basis``, ``batch_norm`` and other constructor arguments.

        Returns:
            The new, built layer.

        Raises:
            ValueError: when ``conv`` is not a valid source or an argument is invalid.
        """
        layer = super().from_conv2d(conv, rank, energy, implementation, name, **kwargs)
        if layer.bn is not None:  # identity in inference: sqrt(var + eps) = 1
            layer.bn.moving_variance.assign(
                np.full((layer.rank,), 1.0 - layer.bn.epsilon, dtype="float32")
            )
        return layer

    def folded_kernel_and_bias(self):
        """The equivalent dense kernel and bias, the BatchNorm folded in (inference).

        Returns:
            A tuple ``(kernel (kh, kw, C, N), bias (N,) or None)`` of float32 arrays.
        """
        basis = ops.convert_to_numpy(self.basis).astype(np.float64)
        comb = ops.convert_to_numpy(self.combination)[0, 0].astype(np.float64)
        bias = ops.convert_to_numpy(self.bias).astype(np.float64) if self.use_bias else None
        if self.bn is not None:
            bn = self.bn
            gamma = ops.convert_to_numpy(bn.gamma) if bn.scale else 1.0
            beta = ops.convert_to_numpy(bn.beta) if bn.center else 0.0
            mean = ops.convert_to_numpy(bn.moving_mean)
            var = ops.convert_to_numpy(bn.moving_variance)
            scale = np.asarray(gamma, np.float64) / np.sqrt(var.astype(np.float64) + bn.epsilon)
            shift = np.asarray(beta, np.float64) - mean * scale
            basis = basis * scale
            bias = (0.0 if bias is None else bias) + shift @ comb
        kernel = np.einsum("hwcm,mn->hwcn", basis, comb)
        return kernel.astype(np.float32), None if bias is None else np.asarray(bias, np.float32)

    @classmethod
    def decompose_with_data(cls, kernel, rank, statistics, **options):
        """Basis ``W P`` and combination ``P^T`` with ``P`` the top-``M`` principal
        directions of the responses (the exact minimizer of the response error).

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            rank: ``M``.
            statistics: ``{"response": (N, N)}``.
            **options: ignored.

        Returns:
            The factors by weight name.
        """
        f, b, _ = dec.basis_data_factors(kernel, statistics["response"], rank)
        return {"basis": f, "combination": b}

    @classmethod
    def data_spectrum(cls, kernel, statistics, **options):
        """The eigenvalues of the response Gram (descending, at most ``min(kh*kw*C, N)``).

        Args:
            kernel: the kernel ``(kh, kw, C, N)``.
            statistics: ``{"response": (N, N)}``.
            **options: ignored.

        Returns:
            A 1-D array of energies.
        """
        return dec.basis_data_factors(kernel, statistics["response"], 1)[2]

    def inference_layers(self) -> list[keras.layers.Layer]:
        """The equivalent built plain-Keras layers (inference).

        Returns:
            ``[Conv2D, Conv2D]``: a ``Conv2D`` ``C -> M`` (the basis, BatchNorm folded in:
            ``F * s``, bias ``beta - mean * s`` with ``s = gamma / sqrt(var + eps)``) then a
            1x1 ``Conv2D`` ``M -> N`` (bias, activation).

        Raises:
            ValueError: when the layer is not built.
        """
        if not self.built:
            raise ValueError(f"{self._who}.inference_layers: build the layer first.")
        basis = ops.convert_to_numpy(self.basis).astype(np.float64)
        shift = None
        if self.bn is not None:
            bn = self.bn
            gamma = ops.convert_to_numpy(bn.gamma) if bn.scale else 1.0
            beta = ops.convert_to_numpy(bn.beta) if bn.center else 0.0
            var = ops.convert_to_numpy(bn.moving_variance).astype(np.float64)
            scale = np.asarray(gamma, np.float64) / np.sqrt(var + bn.epsilon)
            shift = np.asarray(beta, np.float64) - ops.convert_to_numpy(bn.moving_mean) * scale
            basis = basis * scale
        first = keras.layers.Conv2D(
            self.rank,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            use_bias=shift is not None,
            name=f"{self.name}_basis",
            dtype=self.dtype_policy,
        )
        first.build((None, None, None, basis.shape[2]))
        first.kernel.assign(basis.astype(np.float32))
        if shift is not None:
            first.bias.assign(shift.astype(np.float32))
        second = keras.layers.Conv2D(
            self.filters,
            1,
            activation=self.activation,
            use_bias=self.use_bias,
            name=f"{self.name}_combination",
            dtype=self.dtype_policy,
        )
        second.build((None, None, None, self.rank))
        second.kernel.assign(ops.convert_to_numpy(self.combination))
        if self.use_bias:
            second.bias.assign(ops.convert_to_numpy(self.bias))
        return [first, second]

    def get_config(self):
        config = super().get_config()
        config.update({"trainable_basis": self.trainable_basis, "batch_norm": self.batch_norm})
        return config
