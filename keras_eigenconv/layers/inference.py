"""Inference-only helper layers that the export rewrite (``deploy``) inserts.

``ChannelTile`` repeats its input along channels: with it, a depthwise conv with depth
multiplier ``r`` becomes a multiplier-1 depthwise conv on ``r*C`` channels (the "tiled"
arrangement), which XNNPACK runs several times faster.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["ChannelTile", "tiled_kernels"]


def tiled_kernels(eigen_filters, combination):
    """The kernels of the tiled arrangement of a multiplier-``r`` depthwise + 1x1 pair.

    ``depthwise(x, E) -> conv1x1(., A)`` equals ``tile(x, r) -> depthwise(., E') ->
    conv1x1(., A')`` with ``E'[:, :, j*C + c, 0] = E[:, :, c, j]`` (tiled channel ``j*C + c``
    is ``x_c``, as ``ChannelTile`` makes it) and ``A'[0, 0, j*C + c] = A[0, 0, c*r + j]``.
    Written with ``keras.ops``, so it serves NumPy weights (the export rewrite) and
    trainable tensors (``DeCEFConv2D``'s training path) alike.

    Args:
        eigen_filters: The depthwise kernel ``E (kh, kw, C, r)``.
        combination: The 1x1 kernel ``A (1, 1, C*r, N)``.

    Returns:
        ``(E', A')``: ``(kh, kw, r*C, 1)`` and ``(1, 1, r*C, N)``.
    """
    kh, kw, c, r = (int(d) for d in eigen_filters.shape)
    n = int(combination.shape[-1])
    e = ops.reshape(ops.transpose(eigen_filters, (0, 1, 3, 2)), (kh, kw, r * c, 1))
    a = ops.transpose(ops.reshape(combination, (c, r, n)), (1, 0, 2))
    return e, ops.reshape(a, (1, 1, r * c, n))


@keras.saving.register_keras_serializable(package="keras_eigenconv")
class ChannelTile(keras.layers.Layer):
    """Repeat the input ``reps`` times along the channel axis.

    Output channel ``j*C + c`` is input channel ``c``; one ``CONCATENATION`` in LiteRT.

    Args:
        reps: positive int, the number of copies.
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``).

    Input shape:
        ``(B, H, W, C)`` (any rank; the last axis is the channel axis).

    Output shape:
        ``(B, H, W, reps*C)``.

    Raises:
        ValueError: when ``reps`` is not a positive int.

    Example:

    >>> ops.convert_to_numpy(ChannelTile(2)(np.array([[1.0, 2.0]]))).tolist()
    [[1.0, 2.0, 1.0, 2.0]]
    """

    def __init__(self, reps: int, **kwargs):
        super().__init__(**kwargs)
        if isinstance(reps, bool) or not isinstance(reps, (int, np.integer)) or reps < 1:
            raise ValueError(
                f"ChannelTile '{self.name}': reps must be a positive int, got {reps!r}."
            )
        self.reps = int(reps)

    def call(self, inputs):
        if self.reps == 1:
            return inputs
        return ops.concatenate([inputs] * self.reps, axis=-1)

    def compute_output_shape(self, input_shape):
        c = input_shape[-1]
        return (*input_shape[:-1], None if c is None else c * self.reps)

    def get_config(self):
        config = super().get_config()
        config["reps"] = self.reps
        return config
