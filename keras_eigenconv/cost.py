"""Parameter and MAC counting for layers and whole models.

A MAC is one multiply-accumulate of a convolution or matrix product. Bias additions,
activations, BatchNorm and other element-wise work are not counted (the usual convention of
papers that report "FLOPs" as MACs). ``params`` are trainable weights; ``fixed_params`` are
stored, non-trainable ones (a frozen basis, BatchNorm moving statistics).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import keras

from . import graph
from ._table import markdown_table, text_table

__all__ = [
    "OP_TIME",
    "Cost",
    "CostedLayer",
    "ModelCost",
    "conv_output_length",
    "layer_cost",
    "model_cost",
]

# Time per unit of work of the primitive ops, one table for every cost model of the package.
# Each runtime's entry has its own unit, measured on the 2-core reference machine:
# - "tensorflow": relative time per MAC (a dense conv MAC = 1) in TensorFlow on CPU (oneDNN),
#   fitted to benchmarks/layers.py: a depthwise conv with depth_multiplier > 1 costs about 10
#   dense-conv MACs per MAC (with depth_multiplier > 1 or not: "depthwise_multiplier" is
#   split off for training). ``FactorizedConv2D(implementation="auto")`` uses it for inference.
# - "tensorflow_train": the same for a training step (forward + backward: input and weight
#   gradients), relative to a dense conv MAC's forward + backward; fitted to layers timed as
#   a training step in TensorFlow on CPU (8x8..56x56, 16..256 channels, batch 8 and 128):
#   depthwise with depth_multiplier > 1 costs 10-28 (its backward kernels are slow), 1x1
#   1-2, depthwise with multiplier 1 3.5-7; "tile" is per element of a channel-tiled input
#   (DeCEF trains through one: copy forward, sum backward, and the multiplier-1 depthwise
#   conv's backward at the input's resolution): 14-32 at ResNet-20 and ResNet50 shapes
#   (``benchmarks/train_layers.py``). ``"auto"`` uses it for ``call(training=True)``.
# - "litert_relative": LiteRT (XNNPACK, 1 thread) time per unit in dense 3x3 conv MACs: conv
#   kinds per MAC, channel moves per value moved; single-op models at 8x8..32x32 x 64
#   channels: 1x1 conv 0.9-1.6, grouped (G=4) 1.5-1.75, GATHER 99-110, roll 13-37,
#   transpose 16-62. ``SSConv2D`` chooses its arrangement with it.
# - "litert_seconds": seconds per MAC (conv kinds), per copied element ("copy") and per op
#   ("ops"), LiteRT 2.3 + XNNPACK fp32, 2 threads (a 28x28 128->128 3x3 conv: 1.6 ms;
#   multiplier-4 depthwise + 1x1: 1.24 ms; tiled: 0.42 ms): the default of
#   ``deploy.timing.CostModel`` when the timing cache is too small to fit one.
OP_TIME: dict[str, dict[str, float]] = {
    "tensorflow": {"conv": 1.0, "pointwise": 1.0, "depthwise": 10.0, "depthwise_multiplier": 10.0},
    "tensorflow_train": {
        "conv": 1.0,
        "pointwise": 2.0,
        "depthwise": 4.0,
        "depthwise_multiplier": 15.0,
        "tile": 25.0,
    },
    "litert_relative": {
        "conv": 1.0,
        "pointwise": 1.2,
        "grouped": 1.6,
        "depthwise": 10.0,
        "gather": 105.0,
        "roll": 25.0,
        "transpose": 35.0,
    },
    "litert_seconds": {
        "conv": 1.4e-11,
        "pointwise": 8.0e-12,
        "depthwise": 3.0e-11,
        "depthwise_multiplier": 2.3e-10,
        "copy": 2.0e-10,
        "ops": 5.0e-6,
    },
}


@dataclass(frozen=True)
class Cost:
    """Cost of one layer (or a sum of layers); ``+`` adds costs field by field.

    Attributes:
        params: trainable weights.
        fixed_params: stored, non-trainable weights (a frozen basis, BatchNorm moving
            statistics).
        macs: multiply-accumulates of one call.

    Example:

    >>> Cost(params=10, macs=100) + Cost(fixed_params=2, macs=50)
    Cost(params=10, fixed_params=2, macs=150)
    """

    params: int = 0
    fixed_params: int = 0
    macs: int = 0

    @property
    def total_params(self) -> int:
        """``params + fixed_params``."""
        return self.params + self.fixed_params

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.params + other.params,
            self.fixed_params + other.fixed_params,
            self.macs + other.macs,
        )

    def to_dict(self) -> dict:
        """The fields as a dict (``params``, ``fixed_params``, ``macs``)."""
        return asdict(self)


def conv_output_length(length, kernel, stride, padding, dilation):
    """Output length of one spatial axis of a convolution, as Keras computes it.

    Args:
        length: the input length, or ``None`` (unknown).
        kernel: the kernel size along the axis.
        stride: the stride along the axis.
        padding: ``"same"`` or ``"valid"``.
        dilation: the dilation rate along the axis.

    Returns:
        The output length as an int, or ``None`` when ``length`` is ``None``.
    """
    if length is None:
        return None
    if padding == "same":
        return int(math.ceil(length / stride))
    effective = (kernel - 1) * dilation + 1
    return max(0, (length - effective) // stride + 1)


class CostedLayer:
    """Mixin of a layer that counts its own cost: ``cost(input_shape) -> Cost``.

    Every compressed layer of the package is one (``layers.CompressedLayer``);
    ``layer_cost`` asks it instead of counting Keras' built-in layers. Model walks
    (``graph.walk_all``) treat it as one layer, whatever sublayers it holds
    (``graph_leaf``).
    """

    graph_leaf = True

    def cost(self, input_shape) -> Cost:
        """Parameters and MACs of one call on ``input_shape``.

        Args:
            input_shape: the input shape (the batch axis included, or as the layer accepts).

        Returns:
            The layer's ``Cost``.
        """
        raise NotImplementedError


def _weight_counts(layer) -> tuple[int, int]:
    trainable = sum(math.prod(w.shape) for w in layer.trainable_weights)
    fixed = sum(math.prod(w.shape) for w in layer.non_trainable_weights)
    return int(trainable), int(fixed)


def _pixels(shape) -> int:
    dims = tuple(shape[1:-1])
    if any(d is None for d in dims):
        raise ValueError(
            f"Cannot count MACs for spatial shape {dims}: give the model a fixed input size "
            "(for example keras.Input((224, 224, 3)))."
        )
    return int(math.prod(dims))


def layer_cost(layer, input_shape) -> Cost:
    """Cost of one call of ``layer`` on inputs of ``input_shape``.

    Handles this package's layers (through their ``cost`` method), ``Conv1D/2D/3D``,
    ``DepthwiseConv1D/2D``, ``SeparableConv1D/2D``, ``Conv1D/2D/3DTranspose`` and ``Dense``;
    other layers count their weights and no MACs.

    Args:
        layer: a built Keras layer.
        input_shape: the input shape, batch axis included; convolutions need known spatial
            dims.

    Returns:
        The layer's ``Cost``: trainable and non-trainable weights, and MACs.

    Raises:
        ValueError: when a convolution's spatial dims are unknown.
    """
    if isinstance(layer, CostedLayer):
        return layer.cost(input_shape)
    params, fixed = _weight_counts(layer)
    macs = 0
    L = keras.layers
    if isinstance(layer, L.Dense):
        lead = input_shape[1:-1]
        rows = math.prod(d for d in lead if d is not None) if lead else 1
        macs = rows * int(input_shape[-1]) * layer.units
    elif isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        out = layer.compute_output_shape(input_shape)
        c = int(input_shape[-1])
        k = math.prod(layer.kernel_size)
        mid = c * layer.depth_multiplier
        macs = _pixels(out) * (k * mid + mid * layer.filters)
    elif isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        out = layer.compute_output_shape(input_shape)
        c = int(input_shape[-1])
        macs = _pixels(out) * math.prod(layer.kernel_size) * c * layer.depth_multiplier
    elif isinstance(layer, (L.Conv2DTranspose, L.Conv1DTranspose, L.Conv3DTranspose)):
        c = int(input_shape[-1])
        macs = _pixels(input_shape) * math.prod(layer.kernel_size) * c * layer.filters
    elif isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)):
        out = layer.compute_output_shape(input_shape)
        c = int(input_shape[-1]) // layer.groups
        macs = _pixels(out) * math.prod(layer.kernel_size) * c * layer.filters
    return Cost(params, fixed, int(macs))


@dataclass
class ModelCost:
    """Per-layer costs of a model, printable as a text or Markdown table.

    Attributes:
        rows: one dict per layer, with the keys ``name``, ``type``, ``params``,
            ``fixed_params`` and ``macs``.
        total: the sum of the layers' costs, a ``Cost``.
    """

    rows: list[dict] = field(default_factory=list)
    total: Cost = field(default_factory=Cost)

    def to_dict(self) -> dict:
        """``{"layers": rows, "total": total.to_dict()}``."""
        return {"layers": list(self.rows), "total": self.total.to_dict()}

    _columns = ("name", "type", "params", "fixed_params", "macs")
    _headers = {"name": "layer", "fixed_params": "fixed params", "macs": "MACs"}

    def _rows_with_total(self, label: str) -> list[dict]:
        return [*self.rows, {"name": label, "type": "", **self.total.to_dict()}]

    def to_markdown(self) -> str:
        """The rows and a bold total row as a Markdown table."""
        return markdown_table(
            self._rows_with_total("**total**"), self._columns, headers=self._headers
        )

    def __str__(self) -> str:
        return text_table(self._rows_with_total("total"), self._columns, headers=self._headers)


def model_cost(model, prefix: str = "") -> ModelCost:
    """Count parameters and MACs of every layer of a built model, nested models included.

    Each layer is costed at the input shapes it sees in ``model`` itself
    (``graph.layer_input_shapes``: traced from the model's inputs), so a nested model built
    with ``(None, None, C)`` inside a fixed-size model, or a layer reused in a new graph,
    counts at the size it actually runs at. A layer called several times (shared) has its
    weights counted once and its MACs once per call. Nested models (graph or subclassed)
    and custom blocks holding layers are entered, their layers listed as ``outer/inner``;
    a block's own weights (not held by a sublayer, e.g. a kernel used through a raw
    ``ops.conv``) get a row of their own, with no MACs counted.

    Args:
        model: a built ``keras.Model`` (Functional, Sequential or subclassed) with a fixed
            input size (MACs need known spatial dims).
        prefix: prepended to every layer name.

    Returns:
        A ``ModelCost`` with one row per layer and the total.

    Raises:
        ValueError: when a convolution's spatial dims are unknown.

    Example:

    >>> inputs = keras.Input((32, 32, 3))
    >>> model = keras.Model(inputs, keras.layers.Conv2D(8, 3)(inputs))
    >>> model_cost(model).total
    Cost(params=224, fixed_params=0, macs=194400)
    """
    shapes = graph.layer_input_shapes(model)
    result = ModelCost()

    def add(name, layer, total):
        result.rows.append({"name": name, "type": type(layer).__name__, **total.to_dict()})
        result.total = result.total + total

    def is_leaf(layer):
        return isinstance(layer, CostedLayer)

    for path, layer in graph.walk_all(model, prefix, leaf=is_leaf):
        if graph.is_container(layer) and not is_leaf(layer):
            own = graph.own_weights(layer)
            if own:
                trainable = sum(math.prod(w.shape) for w in own if w.trainable)
                fixed = sum(math.prod(w.shape) for w in own if not w.trainable)
                add(path, layer, Cost(int(trainable), int(fixed), 0))
            continue
        total = Cost(*_weight_counts(layer), 0)
        for i, shape in enumerate(shapes.get(id(layer), [])):
            c = layer_cost(layer, shape)
            total = Cost(c.params, c.fixed_params, total.macs + c.macs) if i else c
        add(path, layer, total)
    return result
