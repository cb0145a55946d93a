"""Inference-only helper layers that the export rewrite (``deploy``) inserts.

``ChannelTile`` repeats its input along channels: with it, a depthwise conv with depth
multiplier ``r`` becomes a multiplier-1 depthwise conv on ``r*C`` channels (the "tiled"
arrangement), which XNNPACK runs several times faster.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["ChannelTile"]


@keras.saving.register_keras_serializable(package="keras_eigenconv")
class ChannelTile(keras.layers.Layer):
    """``(B, H, W, C) -> (B, H, W, reps*C)``: the input repeated ``reps`` times along channels
    (output channel ``j*C + c`` is input channel ``c``); one ``CONCATENATION`` in LiteRT."""

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
