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
    """``Conv2D`` expressed on ``rank = M`` basis filters.

    Args: those of ``keras.layers.Conv2D`` plus ``rank`` (``M``, at most
    ``min(filters, kh*kw*C)``), ``trainable_basis`` (default ``False``: the basis is fixed and
    only the 1x1 weights learn, as in the paper; ``True`` follows the author's later code),
    ``batch_norm`` (a ``BatchNormalization`` between the two stages; then the layer always
    runs factorized) and ``implementation``.

    From scratch the basis is random orthogonal: the QR of a Gaussian matrix drawn from the
    layer's ``SeedGenerator(seed)``. ``from_conv2d`` uses the SVD of the filter matrix and is
    exact at ``M = rank(H)`` (with ``batch_norm``, exact in inference mode: the BatchNorm
    starts as the identity).
    """

    _scale_factor = "combination"

    def __init__(
        self, filters, kernel_size, rank, trainable_basis=False, batch_norm=False, **kwargs
    ):
        super().__init__(filters, kernel_size, rank, **kwargs)
        self.trainable_basis = bool(trainable_basis)
        self.batch_norm = bool(batch_norm)
        if self.batch_norm and self.implementation == "dense":
            raise ValueError(
                f"{self._who}: implementation='dense' cannot run a BatchNorm between the "
                "stages; use 'factorized' or 'auto' (fold it for inference with to_conv2d)."
            )
        self.bn = (
            keras.layers.BatchNormalization(axis=-1, name="bn", dtype=self.dtype_policy)
            if self.batch_norm
            else None
        )

    def max_rank(self, in_channels: int) -> int:
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

    def _resolve_implementation(self, input_shape) -> str:
        if self.batch_norm:
            return "factorized"
        return super()._resolve_implementation(input_shape)

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
        return dec.basis_spectrum(kernel)

    @classmethod
    def decompose(cls, kernel, rank, **options):
        f, b = dec.basis_factors(kernel, rank)
        return {"basis": f, "combination": b}

    @classmethod
    def vbmf_matrices(cls, kernel, **options):
        """The filter matrix ``W.reshape(kh*kw*C, N)``."""
        kh, kw, c, n = kernel.shape
        return [kernel.reshape(kh * kw * c, n)]

    @classmethod
    def from_conv2d(cls, conv, rank=None, energy=None, implementation="auto", name=None, **kwargs):
        layer = super().from_conv2d(conv, rank, energy, implementation, name, **kwargs)
        if layer.bn is not None:  # identity in inference: sqrt(var + eps) = 1
            layer.bn.moving_variance.assign(
                np.full((layer.rank,), 1.0 - layer.bn.epsilon, dtype="float32")
            )
        return layer

    def folded_kernel_and_bias(self):
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

    def inference_layers(self) -> list[keras.layers.Layer]:
        """The equivalent built plain-Keras layers (inference): a ``Conv2D`` ``C -> M``
        (the basis, BatchNorm folded in: ``F * s``, bias ``beta - mean * s`` with
        ``s = gamma / sqrt(var + eps)``) then a 1x1 ``Conv2D`` ``M -> N`` (bias, activation)."""
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
