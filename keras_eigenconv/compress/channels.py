"""Structured pruning of the hidden (expanded) channels of inverted-residual blocks.

Low-rank replacements shrink a conv's MACs but not the depthwise conv next to it nor the
memory traffic of the expanded tensor; in MobileNetV2-style networks those dominate, so a
natively thinner network (a smaller width multiplier) runs faster at equal MACs. This module
makes a trained network thinner the same way: in each inverted-residual block

    expand Conv2D 1x1 (C -> H) -> BN -> act -> [ZeroPadding2D] -> DepthwiseConv2D (H)
    -> BN -> act -> [squeeze-and-excitation] -> project Conv2D 1x1 (H -> N) [-> BN]

it keeps ``k`` of the ``H`` hidden channels: the expand conv's output channels, the
BatchNorms' channels, the depthwise channels and the project conv's input channels are
sliced consistently (with an EfficientNet-style squeeze-and-excitation branch, ``u * gate``
with ``gate = sigmoid(excite(act(reduce(GAP(u)))))``, also its reduce conv's input channels,
its excite conv's output channels and its ``Reshape``), and the new model is made of the
same standard Keras layers, narrower. It is not a low-rank method: every kept channel is
one of the original ones.

Which channels (the score, per block): the block output is ``z = sum_j a_j P_j`` (``a_j``
the j-th hidden activation, ``P_j`` the project kernel's j-th input row). Removing channel
``j`` changes ``z`` by ``a_j P_j``; its mean ``E[a_j] P_j`` is folded into the project's bias
(or the moving mean of the BatchNorm after it), so what is lost is the fluctuation, of size
``std(a_j) * ||P_j||``: the score.

- Data-free, ``std(a_j)`` and ``E[a_j]`` come from the BatchNorm before the project conv: its
  output is ``beta_j + gamma_j u`` with ``u`` of zero mean and unit variance on the training
  data; assuming ``u`` Gaussian, the moments of ``act(beta_j + gamma_j u)`` are computed by
  Gauss-Hermite quadrature through the block's own activation layers (so a ReLU6 channel
  with a very negative ``beta`` scores ~0 whatever its ``gamma``). A squeeze-and-excitation
  gate, which depends on the input, is taken at its value for the mean activations, and
  the removed channels' mean pooled value is folded into the reduce conv's bias.
- With calibration data, the moments are measured on the project conv's inputs in the
  original network (the pooled means of a squeeze-and-excitation branch too), and the
  project conv (weights and bias) is refitted by ridge least squares so that the block's
  pre-BN output matches the original's on that data.

How many channels (the allocation, a heuristic): each block's channels are ranked by score.
``allocation="greedy"`` removes channels in groups (down to multiples of ``round_to``),
always the group whose removal costs the least relative signal per MAC (or parameter)
saved, until the budget is met, then gives back the removed groups that still fit under
it (the last step does not overshoot). The cost of a step is ``log(s_before / s_after)``,
``s`` the share of the block's squared scores still kept, so dead channels (score ~0) go
first and free, and a block grows costlier to thin the more it was thinned (every block
counts equally). ``allocation="uniform"`` keeps the same share of every block's channels
(as a width multiplier on the hidden channels only), the largest share that meets the
budget.
A block keeps at least ``round_to`` channels.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np
from keras import ops

from .. import graph
from .._table import markdown_table, text_table
from ..cost import Cost, layer_cost, model_cost
from . import calibration as cal
from . import ranks as rk
from .convert import _matches

__all__ = [
    "BlockReport",
    "ChannelPruner",
    "ChannelPruningReport",
    "prunable_blocks",
    "prune_channels",
]

_ELEMENTWISE = frozenset(
    {
        "relu",
        "relu6",
        "leaky_relu",
        "elu",
        "selu",
        "gelu",
        "silu",
        "swish",
        "hard_silu",
        "hard_swish",
        "sigmoid",
        "hard_sigmoid",
        "tanh",
        "softplus",
        "softsign",
        "mish",
        "linear",
        "exponential",
    }
)
_QUADRATURE_POINTS = 41
MAX_ROWS = cal.MAX_ROWS  # rows (pixels) per block and batch that enter the statistics


# ---- finding the blocks ---------------------------------------------------------------------


def _activation_name(fn) -> str:
    return getattr(fn, "__name__", "")


def _linear(fn) -> bool:
    return fn is None or _activation_name(fn) == "linear"


def _is_bn(layer) -> bool:
    return type(layer) is keras.layers.BatchNormalization and layer.axis in (-1, 3)


def _channelwise(layer, padding_ok: bool) -> bool:
    """A layer that acts on each channel alone, with no channel-sized config."""
    L = keras.layers
    if _is_bn(layer):
        return True
    if type(layer) in (L.ReLU, L.LeakyReLU, L.ELU, L.Dropout, L.SpatialDropout2D, L.Identity):
        return True
    if type(layer) is L.Activation:
        return _activation_name(layer.activation) in _ELEMENTWISE
    return padding_ok and type(layer) is L.ZeroPadding2D


def _is_conv1x1(layer) -> bool:
    return (
        type(layer) is keras.layers.Conv2D
        and tuple(layer.kernel_size) == (1, 1)
        and layer.groups == 1
        and layer.data_format == "channels_last"
    )


@dataclass
class _SE:
    """A squeeze-and-excitation branch on the hidden activations ``u``: ``u * gate(u)``,
    ``gate = excite(reduce(reshape(GAP(u))))`` (with the activation layers in between)."""

    gap: Any
    reshape: Any  # a Reshape to (1, 1, H), or None
    reduce: Any  # Conv2D 1x1, H -> r
    mid: list  # elementwise layers between reduce and excite
    excite: Any  # Conv2D 1x1, r -> H
    after: list  # elementwise layers after excite
    multiply: Any
    tail: list  # no-op layers (Dropout, Identity) between the multiply and the project

    @property
    def layers(self) -> list:
        head = [self.gap] + ([self.reshape] if self.reshape is not None else [])
        return [*head, self.reduce, *self.mid, self.excite, *self.after, self.multiply, *self.tail]


@dataclass
class _Block:
    path: str
    expand: Any
    pre: list
    depthwise: Any
    post: list
    project: Any
    bn: Any  # the last BatchNorm between the depthwise and the project conv
    after_bn: list  # the (elementwise) layers between it and the project conv
    fold_bn: Any  # the BatchNorm after the project conv (takes the bias shift), or None
    hidden: int
    reason: str = ""
    channel_macs: int = 0
    channel_params: int = 0
    block_macs: int = 0
    se: _SE | None = None

    @property
    def layers(self) -> list:
        se = self.se.layers if self.se is not None else []
        out = [self.expand, *self.pre, self.depthwise, *self.post, *se, self.project]
        return out + ([self.fold_bn] if self.fold_bn is not None else [])

    @property
    def se_convs(self) -> list:
        return [self.se.reduce, self.se.excite] if self.se is not None else []


def _chain(g, expand, path: str) -> _Block | None:
    """The inverted-residual block that starts at ``expand`` in graph model ``g``, if any."""
    if not _is_conv1x1(expand):
        return None
    pre, cur = [], graph.sole_consumer(g, expand)
    while cur is not None and _channelwise(cur, padding_ok=True):
        pre.append(cur)
        cur = graph.sole_consumer(g, cur)
    dw = cur
    if (
        type(dw) is not keras.layers.DepthwiseConv2D
        or dw.depth_multiplier != 1
        or dw.data_format != "channels_last"
    ):
        return None
    post, cur = [], graph.sole_consumer(g, dw)
    while cur is not None and _channelwise(cur, padding_ok=False):
        post.append(cur)
        cur = graph.sole_consumer(g, cur)
    se = None
    if cur is None:  # the hidden tensor has several readers: a squeeze-and-excitation?
        se = _se_branch(g, post[-1] if post else dw, int(expand.filters))
        if se is None:
            return None
        cur = graph.sole_consumer(g, se.tail[-1] if se.tail else se.multiply)
    project = cur
    bns = [i for i, la in enumerate(post) if _is_bn(la)]
    if project is None or not _is_conv1x1(project) or not bns:
        return None
    fold = None
    if not project.use_bias and _linear(project.activation):
        nxt = graph.sole_consumer(g, project)
        fold = nxt if nxt is not None and _is_bn(nxt) else None
    return _Block(
        path=path,
        expand=expand,
        pre=pre,
        depthwise=dw,
        post=post,
        project=project,
        bn=post[bns[-1]],
        after_bn=post[bns[-1] + 1 :],
        fold_bn=fold,
        hidden=int(expand.filters),
        se=se,
    )


def _se_branch(g, last, hidden: int) -> _SE | None:
    """The squeeze-and-excitation branch on the output of ``last`` (read by a
    ``GlobalAveragePooling2D`` and a two-input ``Multiply``), if that is what reads it."""
    L = keras.layers
    found = graph.readers(g, last)
    if not found or len(found) != 2:
        return None
    gap = next((la for la, n in found if type(la) is L.GlobalAveragePooling2D and n == 1), None)
    mul = next((la for la, n in found if type(la) is L.Multiply and n == 2), None)
    if gap is None or mul is None or gap.data_format != "channels_last":
        return None
    cur = graph.sole_consumer(g, gap)
    reshape = None
    if type(cur) is L.Reshape and tuple(cur.target_shape) == (1, 1, hidden):
        reshape, cur = cur, graph.sole_consumer(g, cur)
    elif not gap.keepdims:
        return None
    if cur is None or not _is_conv1x1(cur):
        return None
    reduce, mid, cur = cur, [], graph.sole_consumer(g, cur)
    while cur is not None and _channelwise(cur, padding_ok=False) and not _is_bn(cur):
        mid.append(cur)
        cur = graph.sole_consumer(g, cur)
    if cur is None or not _is_conv1x1(cur) or cur.filters != hidden:
        return None
    excite, after = cur, []
    last_se = excite
    while True:
        nxt = graph.readers(g, last_se)
        if nxt == [(mul, 2)]:
            break
        cur = graph.sole_consumer(g, last_se)
        if cur is None or not _channelwise(cur, padding_ok=False) or _is_bn(cur):
            return None
        after.append(cur)
        last_se = cur
    tail, cur = [], graph.sole_consumer(g, mul)
    while type(cur) in (L.Dropout, L.Identity):
        tail.append(cur)
        cur = graph.sole_consumer(g, cur)
    return _SE(gap, reshape, reduce, mid, excite, after, mul, tail)


def _find_blocks(model) -> list[_Block]:
    paths = {id(la): p for p, la in graph.walk(model, include_models=True)}
    blocks, used = [], set()
    for g in graph.graph_models(model):
        for layer in g.layers:
            block = _chain(g, layer, paths.get(id(layer), layer.name))
            if block is None:
                continue
            ids = {id(la) for la in block.layers}
            if ids & used:  # a conv that is one block's project and the next one's expand
                continue
            used |= ids
            blocks.append(block)
    return blocks


def prunable_blocks(model: keras.Model) -> list[list[str]]:
    """The inverted-residual blocks whose hidden channels ``prune_channels`` can prune.

    A block is a chain ``Conv2D 1x1 -> (BatchNormalization, elementwise activation layers,
    ZeroPadding2D)* -> DepthwiseConv2D (depth_multiplier 1) -> (BatchNormalization,
    elementwise activation layers)* -> Conv2D 1x1`` with at least one BatchNormalization
    after the depthwise conv, in which every layer is called once and every intermediate
    tensor is read by the next layer only (not a model output), except that the hidden
    activations ``u`` before the project conv may go through a squeeze-and-excitation
    branch: ``Multiply([u, gate])``, ``gate`` = ``GlobalAveragePooling2D`` (-> ``Reshape``
    to ``(1, 1, H)``) -> ``Conv2D`` 1x1 -> activations -> ``Conv2D`` 1x1 ``H`` filters ->
    activations (EfficientNet's blocks). Nested graph models are searched too.

    Args:
        model: a built Functional or Sequential ``keras.Model``.

    Returns:
        One list per block: the paths of its layers, expand conv first, project conv last
        (then the BatchNorm after the project conv, when the bias shift is folded into it).

    Raises:
        ValueError: when ``model`` is not a built Functional or Sequential model.
    """
    _check_model(model, "prunable_blocks")
    paths = {id(la): p for p, la in graph.walk(model, include_models=True)}
    return [[paths.get(id(la), la.name) for la in b.layers] for b in _find_blocks(model)]


# ---- the report ------------------------------------------------------------------------------


@dataclass
class BlockReport:
    """One inverted-residual block: its hidden channels before and after pruning.

    Attributes:
        name: The path of the block's expand conv (``outer/inner`` in nested models).
        project: The path of its project conv.
        hidden: The hidden channels ``H`` before pruning.
        kept: The hidden channels kept, ``k`` (``H`` when the block was left whole).
        macs_before: The MACs of the block's expand, depthwise and project convs.
        macs_after: Their MACs after pruning (None when the input size is unknown).
        score_kept: The share of the block's squared channel scores that the kept channels
            hold (1.0 when whole).
        objective: ``"bn"`` (data-free scores, the removed channels' mean folded into the
            bias), ``"data"`` (scores measured on calibration data, mean folded) or
            ``"data+refit"`` (and the project conv refitted by least squares).
        reason: Why the block was left whole, when it was (excluded, too narrow, or the
            allocation keeps it).
    """

    name: str
    project: str
    hidden: int
    kept: int
    macs_before: int | None = None
    macs_after: int | None = None
    score_kept: float = 1.0
    objective: str | None = None
    reason: str = ""

    @property
    def pruned(self) -> bool:
        return self.kept < self.hidden


@dataclass
class ChannelPruningReport:
    """What ``prune_channels`` did: per block the channels kept, and the model totals.

    Prints as a text table (``str``), a Markdown table (``to_markdown``) and a dict
    (``to_dict``, JSON-ready), like ``ConversionReport``.

    Attributes:
        selection: How the channels per block were chosen, in words.
        blocks: One ``BlockReport`` per block found.
        total_before: The ``model_cost`` total of the original model.
        total_after: The ``model_cost`` total of the pruned model.
        macs_known: Whether the model's input size is fixed, so MACs could be counted.
        seconds: The wall time of the call.
        budget_met: With a budget, whether the pruned model meets it; None without one.
        calibration: With calibration data: the samples used to fit and to measure, and
            the pruned model's output agreement with the original on the held-out samples
            (``relative_error``, ``top1_agreement`` for class outputs).
        latency: With a latency budget (the package's ``prune_channels``): the target, the
            budget, each measured MAC share with its latency ratio (``feedback``), the
            returned model's confirmed measurement (``measured``) and how many whole models
            were timed; None otherwise.
    """

    selection: str
    blocks: list[BlockReport] = field(default_factory=list)
    total_before: Cost = field(default_factory=Cost)
    total_after: Cost = field(default_factory=Cost)
    macs_known: bool = True
    seconds: float = 0.0
    budget_met: bool | None = None
    calibration: dict | None = None
    latency: dict | None = None

    @property
    def pruned(self) -> list[BlockReport]:
        return [b for b in self.blocks if b.pruned]

    @property
    def macs_ratio(self) -> float | None:
        if not self.macs_known or not self.total_before.macs:
            return None
        return self.total_after.macs / self.total_before.macs

    @property
    def params_ratio(self) -> float | None:
        before = self.total_before.total_params
        return self.total_after.total_params / before if before else None

    def to_dict(self) -> dict:
        """The report as a JSON-ready dict."""
        return {
            "selection": self.selection,
            "blocks": [asdict(b) for b in self.blocks],
            "total_before": self.total_before.to_dict(),
            "total_after": self.total_after.to_dict(),
            "macs_known": self.macs_known,
            "macs_ratio": self.macs_ratio,
            "params_ratio": self.params_ratio,
            "pruned": len(self.pruned),
            "seconds": self.seconds,
            "budget_met": self.budget_met,
            "calibration": self.calibration,
            "latency": self.latency,
        }

    _COLUMNS = ("block", "hidden", "kept", "MACs before", "MACs after", "score kept", "note")

    def _rows(self) -> list[dict]:
        return [
            {
                "block": b.name,
                "hidden": b.hidden,
                "kept": b.kept,
                "MACs before": b.macs_before,
                "MACs after": b.macs_after,
                "score kept": b.score_kept,
                "note": b.objective if b.pruned else f"kept whole: {b.reason}",
            }
            for b in self.blocks
        ]

    def _summary(self) -> list[str]:
        b, a = self.total_before, self.total_after
        lines = [
            f"prune_channels: {self.selection}; pruned {len(self.pruned)} of "
            f"{len(self.blocks)} inverted-residual blocks in {self.seconds:.2f} s",
            f"parameters: {b.total_params:,} -> {a.total_params:,}"
            + (f" (x{self.params_ratio:.3f})" if self.params_ratio is not None else ""),
        ]
        if self.macs_ratio is not None:
            lines.append(f"MACs: {b.macs:,} -> {a.macs:,} (x{self.macs_ratio:.3f})")
        else:
            lines.append("MACs: unknown (the model's input size is not fixed)")
        if self.budget_met is False:
            lines.append(f"budget MISSED: {self.selection} (budget_met=False)")
        lat = self.latency
        if lat and lat.get("measured"):
            m = lat["measured"]
            lines.append(
                f"latency on {lat['target']}: {m['ratio']:.3f} of the original's "
                f"(p10-p90 {m['p10']:.3f}-{m['p90']:.3f}, {m['rounds']} interleaved rounds; "
                f"budget {lat['budget']}; {lat['model_timings']} whole models timed)"
            )
        c = self.calibration
        if c:
            agree = c.get("top1_agreement")
            lines.append(
                f"calibration: {c['fit_samples']} samples to fit, {c['heldout_samples']} "
                "held out; output vs original on held-out: "
                + (f"top-1 agreement {agree:.4f}, " if agree is not None else "")
                + f"relative error {c['relative_error']:.4f}"
            )
        return lines

    def __str__(self) -> str:
        table = text_table(self._rows(), self._COLUMNS, {"score kept": ".4f"})
        return "\n".join([table, "", *self._summary()])

    def to_markdown(self) -> str:
        """The summary as a list, then the per-block table, in Markdown."""
        summary = "\n".join(f"- {line}" for line in self._summary())
        table = markdown_table(self._rows(), self._COLUMNS, {"score kept": ".4f"})
        return f"{summary}\n\n{table}\n"


# ---- argument checks -------------------------------------------------------------------------


def _check_model(model, fn: str) -> None:
    if not isinstance(model, keras.Model):
        raise ValueError(f"{fn} needs a keras.Model, got {type(model).__name__}.")
    if not graph.is_graph_model(model) or graph.is_config_functional(model):
        raise ValueError(
            f"{fn}: model '{model.name}' ({type(model).__name__}) is not a plain Functional "
            "or Sequential model; channel pruning rebuilds the layer graph. Build the network "
            "with the functional API (keras.applications models are), or use convert()."
        )
    if not model.built or (model.layers and not model.weights):
        raise ValueError(
            f"{fn}: model '{model.name}' is not built, so it has no weights to prune. Give "
            "it an input shape (keras.Input) or call it on data first."
        )


def _check_keep(keep) -> None:
    if isinstance(keep, (bool, np.bool_)) or not isinstance(keep, numbers.Real):
        raise ValueError(
            f"prune_channels: keep={keep!r} must be a share of each block's hidden channels "
            "(0 < keep <= 1, e.g. 0.75) or a channel count (an int > 1)."
        )
    if not 0 < float(keep) < math.inf or (float(keep) > 1 and float(keep) != int(keep)):
        raise ValueError(
            f"prune_channels: keep={keep!r} must be in (0, 1] (a share of each block's "
            "hidden channels) or an int > 1 (a channel count)."
        )


def _check_spec(spec, name: str) -> None:
    items = spec if isinstance(spec, (list, tuple, set, frozenset)) else [spec]
    for item in items:
        if item is not None and not isinstance(item, (str, type)) and not callable(item):
            raise ValueError(
                f"prune_channels: {name} entries must be name patterns (e.g. 'block_1*'), "
                f"layer classes or predicates fn(expand_conv) -> bool, got {item!r}."
            )


# ---- scores ----------------------------------------------------------------------------------


def _w(variable) -> np.ndarray:
    return np.array(ops.convert_to_numpy(variable), dtype=np.float64)


def _project_kernel(block) -> np.ndarray:
    """The project conv's kernel as an ``(H, N)`` matrix."""
    return _w(block.project.kernel)[0, 0]


def _bn_moments(block) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each hidden activation (the project conv's inputs), data-free: the
    last BatchNorm's output taken as ``beta + gamma u``, ``u ~ N(0, 1)``, through the layers
    after it, by Gauss-Hermite quadrature."""
    bn, h = block.bn, block.hidden
    gamma = _w(bn.gamma) if bn.scale else np.ones(h)
    beta = _w(bn.beta) if bn.center else np.zeros(h)
    nodes, weights = np.polynomial.hermite_e.hermegauss(_QUADRATURE_POINTS)
    weights = weights / weights.sum()
    z = (beta[None, :] + gamma[None, :] * nodes[:, None]).astype(np.float32)[None, :, None, :]
    for layer in block.after_bn:  # stateless, elementwise: fresh copies run them
        z = type(layer).from_config(layer.get_config())(z, training=False)
    a = np.asarray(ops.convert_to_numpy(z), np.float64)[0, :, 0, :]  # (points, H)
    mean = weights @ a
    var = weights @ (a - mean) ** 2
    return mean, np.sqrt(np.maximum(var, 0.0))


def _se_gate(block, u_mean: np.ndarray) -> np.ndarray:
    """The squeeze-and-excitation gate of ``block`` when every pooled hidden activation is
    at its mean ``u_mean`` (the data-free stand-in for the input-dependent gate)."""
    se = block.se
    z = ops.convert_to_tensor(u_mean.astype(np.float32)[None, None, None, :])
    for conv, layers in ((se.reduce, se.mid), (se.excite, se.after)):
        w = _w(conv.kernel)[0, 0]
        z = np.asarray(ops.convert_to_numpy(z), np.float64) @ w
        if conv.use_bias:
            z = z + _w(conv.bias)
        z = conv.activation(ops.convert_to_tensor(z.astype(np.float32)))
        for layer in layers:  # stateless, elementwise: fresh copies run them
            z = type(layer).from_config(layer.get_config())(z, training=False)
    return np.asarray(ops.convert_to_numpy(z), np.float64).reshape(-1)


class _Gram:
    """Running ``[A, 1]^T [A, 1]`` of a block's hidden activations ``A`` (rows: pixels)."""

    def __init__(self, h: int):
        self.g = np.zeros((h + 1, h + 1))
        self.n = 0

    def add(self, a: np.ndarray) -> None:
        aug = np.concatenate([a, np.ones((len(a), 1))], axis=1)
        self.g += aug.T @ aug
        self.n += len(a)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        n = max(self.n, 1)
        mean = self.g[:-1, -1] / n
        var = np.diag(self.g)[:-1] / n - mean**2
        return mean, np.sqrt(np.maximum(var, 0.0))


def _collect_grams(model, blocks, batches, max_rows: int, seed: int = 0):
    """One pass of (a recording copy of) ``model``: each block's project-input Gram, and
    for a block with a squeeze-and-excitation branch the mean of its reduce conv's input
    (the pooled hidden activations). Returns ``(grams, se_means)``, lists over blocks."""
    rng = np.random.default_rng(seed)
    grams = [_Gram(b.hidden) for b in blocks]
    sums = [[np.zeros(b.hidden), 0] for b in blocks]
    keys = {id(b.project): i for i, b in enumerate(blocks)}
    keys.update({id(b.se.reduce): ("se", i) for i, b in enumerate(blocks) if b.se is not None})
    copy, recorders = cal._recording_copy(model, keys)

    def hook(key, inputs, outputs):
        a = np.asarray(ops.convert_to_numpy(inputs), np.float64)
        a = a.reshape(-1, a.shape[-1])
        if isinstance(key, tuple):
            sums[key[1]][0] += a.sum(axis=0)
            sums[key[1]][1] += len(a)
            return
        if len(a) > max_rows:
            a = a[np.sort(rng.choice(len(a), size=max_rows, replace=False))]
        grams[key].add(a)

    cal._run(copy, recorders, batches, hook)
    se_means = [
        total / max(n, 1) if b.se is not None else None for b, (total, n) in zip(blocks, sums)
    ]
    return grams, se_means


# ---- allocation ------------------------------------------------------------------------------


def _allowed(h: int, round_to: int) -> list[int]:
    """The channel counts a block of ``h`` hidden channels may keep, largest first: ``h``,
    then the multiples of ``round_to`` below it, down to ``round_to``."""
    top = (h - 1) // round_to * round_to
    return [h, *range(top, round_to - 1, -round_to)] if h > round_to else [h]


def _keep_count(h: int, want: float, round_to: int) -> int:
    """The smallest allowed count >= ``want`` (at most ``h``)."""
    return min(k for k in _allowed(h, round_to) if k >= min(want, h))


def _greedy(blocks, orders, shares, unit_costs, to_remove: float, round_to: int) -> list[int]:
    """Kept channels per block: remove the channel group with the least relative signal
    lost, ``log(kept share before / kept share after)``, per unit of cost saved until
    ``to_remove`` is reached (a heuristic, not an optimum)."""
    import heapq

    kept = [b.hidden for b in blocks]
    steps = [_allowed(b.hidden, round_to) for b in blocks]
    pos = [0] * len(blocks)
    heap = []
    eps = 1e-9

    def kept_share(i, k):
        return float(shares[i][orders[i][:k]].sum()) + eps

    def push(i):
        if pos[i] + 1 < len(steps[i]) and unit_costs[i] > 0:
            cur, nxt = steps[i][pos[i]], steps[i][pos[i] + 1]
            loss = math.log(kept_share(i, cur) / kept_share(i, nxt))
            heapq.heappush(heap, (loss / ((cur - nxt) * unit_costs[i]), i))

    for i in range(len(blocks)):
        push(i)
    removed = 0.0
    while removed < to_remove and heap:
        _, i = heapq.heappop(heap)
        cur, nxt = steps[i][pos[i]], steps[i][pos[i] + 1]
        removed += (cur - nxt) * unit_costs[i]
        pos[i] += 1
        kept[i] = nxt
        push(i)
    # the last step may overshoot: give back the removed groups that still fit in the
    # slack, the most signal per unit of cost first
    while True:
        slack = removed - to_remove
        best = None
        for i in range(len(blocks)):
            if pos[i] == 0:
                continue
            cur, prev = steps[i][pos[i]], steps[i][pos[i] - 1]
            cost = (prev - cur) * unit_costs[i]
            if cost <= slack:
                gain = math.log(kept_share(i, prev) / kept_share(i, cur)) / cost
                if best is None or gain > best[0]:
                    best = (gain, i, cost)
        if best is None:
            return kept
        _, i, cost = best
        pos[i] -= 1
        kept[i] = steps[i][pos[i]]
        removed -= cost


def _uniform(blocks, unit_costs, to_remove: float, round_to: int) -> list[int]:
    """Kept channels per block: the same share ``s`` of every block (rounded up to the
    allowed counts), the largest ``s`` that removes at least ``to_remove`` (bisection)."""

    def counts(share):
        return [_keep_count(b.hidden, share * b.hidden, round_to) for b in blocks]

    def removed(ks):
        return sum((b.hidden - k) * u for b, k, u in zip(blocks, ks, unit_costs))

    lo, hi = 0.0, 1.0  # removed(counts(lo)) >= to_remove (checked before), hi may not be
    if removed(counts(hi)) >= to_remove:
        return counts(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        if removed(counts(mid)) >= to_remove:
            lo = mid
        else:
            hi = mid
    return counts(lo)


# ---- building the narrower layers ------------------------------------------------------------


def _rebuilt(layer, changes: Mapping, channels: int, weights: list[np.ndarray]):
    """A new layer like ``layer`` with ``changes`` to its config, built on its input shape
    with the last axis set to ``channels``, holding ``weights`` (fresh buffers)."""
    config = {**layer.get_config(), **changes}
    new = type(layer).from_config(config)
    shape = graph.input_shape(layer)
    new.build((*shape[:-1], channels))
    new.set_weights([np.asarray(w, dtype=np.float32) for w in weights])
    return new


def _slice_block(
    block, keep: np.ndarray, kernel: np.ndarray, bias: np.ndarray, se_mean: np.ndarray | None
) -> dict:
    """``{id(old layer): new layer}`` for a block keeping the hidden channels ``keep``
    (sorted indices), with project kernel ``(k, N)`` and the project's full output bias;
    ``se_mean``: the mean pooled activation of each hidden channel, whose share in the
    squeeze-and-excitation reduce conv is folded into its bias for the removed channels."""
    k = len(keep)
    out = {}
    if block.se is not None:
        se = block.se
        if se.reshape is not None:
            out[id(se.reshape)] = _rebuilt(se.reshape, {"target_shape": (1, 1, k)}, k, [])
        red = se.reduce
        wr = _w(red.kernel)
        dropped = np.setdiff1d(np.arange(block.hidden), keep)
        shift = se_mean[dropped] @ wr[0, 0][dropped]
        b_red = (_w(red.bias) if red.use_bias else 0.0) + shift
        out[id(red)] = _rebuilt(red, {"use_bias": True}, k, [wr[:, :, keep, :], b_red])
        ex_se = se.excite
        weights = [w[..., keep] for w in map(_w, ex_se.weights)]
        r = graph.input_shape(ex_se)[-1]
        out[id(ex_se)] = _rebuilt(ex_se, {"filters": k}, r, weights)
    ex = block.expand
    cin = graph.input_shape(ex)[-1]
    out[id(ex)] = _rebuilt(ex, {"filters": k}, cin, [w[..., keep] for w in map(_w, ex.weights)])
    for layer in [*block.pre, *block.post]:
        if _is_bn(layer):
            out[id(layer)] = _rebuilt(layer, {}, k, [_w(w)[keep] for w in layer.weights])
    dw = block.depthwise
    weights = [_w(dw.kernel)[:, :, keep, :]] + ([_w(dw.bias)[keep]] if dw.use_bias else [])
    out[id(dw)] = _rebuilt(dw, {}, k, weights)
    pr = block.project
    original_bias = _w(pr.bias) if pr.use_bias else np.zeros(kernel.shape[1])
    shift = bias - original_bias
    new_kernel = kernel.reshape(1, 1, k, -1)
    if pr.use_bias:
        out[id(pr)] = _rebuilt(pr, {}, k, [new_kernel, bias])
    elif block.fold_bn is not None:  # BN(z + c) with moving_mean - c == BN(z)
        out[id(pr)] = _rebuilt(pr, {}, k, [new_kernel])
        fb = block.fold_bn
        weights = [_w(v) - shift if v is fb.moving_mean else _w(v) for v in fb.weights]
        out[id(fb)] = _rebuilt(fb, {}, graph.input_shape(fb)[-1], weights)
    elif np.any(shift):
        out[id(pr)] = _rebuilt(pr, {"use_bias": True}, k, [new_kernel, shift])
    else:
        out[id(pr)] = _rebuilt(pr, {}, k, [new_kernel])
    return out


def _refit(gram: _Gram, keep: np.ndarray, p_aug: np.ndarray, ridge: float):
    """Ridge least squares ``min ||[A_S, 1] w - [A, 1] P_aug||^2 + lam ||w_S||^2`` from the
    Gram of ``[A, 1]``; ``lam = ridge * mean(diag(A_S^T A_S))``. Returns ``(kernel (k, N),
    bias (N,))``."""
    h = len(p_aug) - 1
    idx = np.concatenate([keep, [h]])
    g = gram.g[np.ix_(idx, idx)].copy()
    k = len(keep)
    lam = ridge * float(np.mean(np.diag(g)[:k])) if k else 0.0
    g[np.arange(k), np.arange(k)] += lam
    rhs = gram.g[idx, :] @ p_aug
    w = np.linalg.lstsq(g, rhs, rcond=None)[0] if lam == 0 else np.linalg.solve(g, rhs)
    return w[:k], w[k]


# ---- the function ----------------------------------------------------------------------------


def prune_channels(
    model: keras.Model,
    budget: Mapping[str, float] | None = None,
    keep: float | int | None = None,
    include=None,
    exclude=None,
    round_to: int = 8,
    allocation: str = "greedy",
    calibration_data=None,
    calibration_steps: int | None = None,
    calibration_batch_size: int = 16,
    refit: bool = True,
    ridge: float = 1e-3,
    strict: bool = True,
) -> tuple[keras.Model, ChannelPruningReport]:
    """Prune the hidden channels of the inverted-residual blocks of ``model``.

    Each block (``prunable_blocks``: expand ``Conv2D`` 1x1 ``C -> H``, BatchNorm,
    activation, depthwise conv, BatchNorm, activation, [squeeze-and-excitation,] project
    ``Conv2D`` 1x1 ``H -> N``) keeps ``k`` of its ``H`` hidden channels: the new model has
    the same layers with ``filters=k`` in the expand conv, ``k`` channels in the BatchNorms
    and the depthwise conv, and ``k`` input channels in the project conv (and in the
    squeeze-and-excitation convs; weights sliced, fresh buffers). Its MACs fall by
    ``(H - k) * (P_e C + P_d 9 + P_p N [+ 2 r])`` per block (``P_*`` the output pixels of
    each conv, ``r`` the squeeze-and-excitation width). Channels are ranked by
    ``std(a_j) * ||P_j||`` (module docstring): the size of what removing activation ``a_j``
    with project row ``P_j`` changes in the block's output once its mean ``E[a_j] P_j`` is
    folded into the project's bias (or the moving mean of the BatchNorm after the project
    conv; a project conv without either gets a bias). ``k`` is rounded to multiples of
    ``round_to`` (XNNPACK packs channels by 8), at least ``round_to`` and at most ``H``. A
    block keeping every channel is copied unchanged, so ``keep=1.0`` gives the original
    outputs exactly. The user's model is not modified.

    Args:
        model: A built Functional or Sequential ``keras.Model`` (nested graph models are
            searched too), e.g. ``keras.applications.MobileNetV2``.
        budget: ``{"macs": x}`` or ``{"params": x}``, ``x <= 1`` a share of the whole
            model's total (``model_cost``), else a count: channel groups are removed,
            smallest share of their block's squared scores per MAC (parameter) saved
            first, until it is met (a greedy heuristic). A MACs budget needs a fixed input
            size.
        keep: Instead of a budget: each block keeps this share of its hidden channels
            (``0 < keep <= 1``) or this many (an int > 1), rounded up to the allowed
            counts.
        include: Blocks to consider, matched on their expand conv: name globs (against its
            name and its ``outer/inner`` path), layer classes, predicates, or lists of
            these (as in ``convert``).
        exclude: Blocks to leave whole, in the same forms.
        round_to: Kept counts are multiples of it (or ``H``); also the least kept.
        allocation: With a ``budget``: ``"greedy"`` (channel groups leave by least
            relative signal lost per MAC saved; blocks end up unevenly thinned) or
            ``"uniform"`` (the same share of every block's hidden channels).
        calibration_data: Unlabeled inputs of the model (an array ``(n, *input_shape)``,
            a ``tf.data.Dataset`` or an iterable of batches), a few hundred typical ones.
            With it, the activations' means and spreads are measured on the data (the
            last eighth of the batches held out to measure the result), and with
            ``refit`` the project conv of each pruned block is refitted to them.
        calibration_steps: At most this many batches of ``calibration_data``.
        calibration_batch_size: Rows per batch for array ``calibration_data``.
        refit: With calibration data: refit each pruned block's project kernel ``W`` (k, N)
            and bias ``b`` by ridge least squares, ``min sum ||a_S W + b - a P - b0||^2 +
            lam ||W||^2`` over the data's pixels (``a`` the original network's hidden
            activations, ``a_S`` the kept ones), so the block's pre-BatchNorm output
            matches the original's; ``False`` only folds the removed channels' means.
        ridge: The refit's regularization, relative: ``lam = ridge * mean(diag(a_S^T
            a_S))``.
        strict: With a ``budget``: raise when the pruned model misses it; ``False``
            returns it with ``report.budget_met == False``.

    Returns:
        A tuple ``(new_model, report)``: the pruned model and its
        ``ChannelPruningReport``.

    Raises:
        ValueError: before any work, when ``model`` is not a built Functional or
            Sequential model; when both or neither of ``budget`` and ``keep`` are given
            or one is invalid; when ``round_to``, ``ridge`` or ``calibration_data`` is
            invalid; when no prunable block is found (the message names ``include`` and
            ``exclude``); when a MACs budget is given for a model without a fixed input
            size, or the budget is below what keeping ``round_to`` channels per block
            reaches. After the work, with ``strict``, when the pruned model misses the
            budget.
    """
    t0 = time.perf_counter()
    _check_model(model, "prune_channels")
    _check_selection(budget, keep)
    pruner = ChannelPruner(
        model,
        include=include,
        exclude=exclude,
        round_to=round_to,
        allocation=allocation,
        calibration_data=calibration_data,
        calibration_steps=calibration_steps,
        calibration_batch_size=calibration_batch_size,
        refit=refit,
        ridge=ridge,
    )
    return pruner.prune(budget=budget, keep=keep, strict=strict, started=t0)


def _check_selection(budget, keep) -> tuple[str | None, float | None]:
    """``(metric, value)`` of a budget (``(None, None)`` for ``keep``), both checked."""
    if (budget is None) == (keep is None):
        raise ValueError(
            "prune_channels: pass exactly one of budget (e.g. budget={'macs': 0.7}) and keep "
            "(e.g. keep=0.75, the share of each block's hidden channels)."
        )
    if budget is not None:
        try:
            return rk.parse_budget(budget)
        except ValueError as err:
            raise ValueError(f"prune_channels: {err}") from None
    _check_keep(keep)
    return None, None


class ChannelPruner:
    """The budget-independent work of ``prune_channels``, done once per model.

    The constructor checks the arguments, finds the blocks, counts their costs and reads
    the calibration data; the channel scores (with data, after one pass of the model over
    it) are computed on the first ``prune`` and kept. ``prune`` then allocates and builds
    for one budget (or ``keep``), so pruning one model at several budgets
    (``keras_eigenconv.prune_channels`` with a latency budget) reads the data and scores
    the channels once.

    Args:
        model: As ``prune_channels``.
        include: As ``prune_channels``.
        exclude: As ``prune_channels``.
        round_to: As ``prune_channels``.
        allocation: As ``prune_channels``.
        calibration_data: As ``prune_channels`` (read here, once).
        calibration_steps: As ``prune_channels``.
        calibration_batch_size: As ``prune_channels``.
        refit: As ``prune_channels``.
        ridge: As ``prune_channels``.

    Raises:
        ValueError: As ``prune_channels``, for everything but the budget and ``keep``.
    """

    def __init__(
        self,
        model: keras.Model,
        include: Any = None,
        exclude: Any = None,
        round_to: int = 8,
        allocation: str = "greedy",
        calibration_data: Any = None,
        calibration_steps: int | None = None,
        calibration_batch_size: int = 16,
        refit: bool = True,
        ridge: float = 1e-3,
    ) -> None:
        _check_model(model, "prune_channels")
        if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or round_to < 1:
            raise ValueError(
                f"prune_channels: round_to={round_to!r} must be a positive int (8: XNNPACK's "
                "channel packing; 1: any count)."
            )
        round_to = int(round_to)
        if allocation not in ("greedy", "uniform"):
            raise ValueError(
                f"prune_channels: allocation={allocation!r} must be 'greedy' or 'uniform'."
            )
        if isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not 0 <= ridge < 1e6:
            raise ValueError(f"prune_channels: ridge={ridge!r} must be a number >= 0 (e.g. 1e-3).")
        for spec, name in ((include, "include"), (exclude, "exclude")):
            _check_spec(spec, name)
        # -- 1. the blocks, their costs ------------------------------------------------------------
        blocks = _find_blocks(model)
        paths = {id(la): p for p, la in graph.walk(model, include_models=True)}
        for b in blocks:
            if include is not None and not _matches(include, b.path, b.expand):
                b.reason = "not matched by include"
            elif exclude is not None and _matches(exclude, b.path, b.expand):
                b.reason = "excluded"
            elif b.hidden <= round_to:
                b.reason = f"{b.hidden} hidden channels, not more than round_to={round_to}"
        active = [b for b in blocks if not b.reason]
        if not active:
            found = (
                f"{len(blocks)} blocks were found, but include/exclude/round_to leave none "
                f"({'; '.join(f'{b.path}: {b.reason}' for b in blocks[:3])}). Widen include or "
                "narrow exclude."
                if blocks
                else "none was found. A block is a chain 1x1 Conv2D -> BatchNormalization -> "
                "activation -> DepthwiseConv2D -> BatchNormalization -> activation -> 1x1 "
                "Conv2D, each layer called once and each tensor read by the next layer only "
                "(MobileNetV2's inverted residuals). For other networks use convert() "
                "(low-rank layers)."
            )
            raise ValueError(f"prune_channels: no prunable inverted-residual block: {found}")
        # the data is read (a generator consumed) only once the model has blocks to prune
        batches = None
        if calibration_data is not None:
            try:
                batches = cal.calibration_batches(
                    calibration_data, model, calibration_steps, calibration_batch_size
                )
            except ValueError as err:
                raise ValueError(str(err).replace("convert:", "prune_channels:", 1)) from None
        try:
            before = model_cost(model).total
            macs_known = True
        except ValueError:
            before = Cost(*_param_counts(model), 0)
            macs_known = False
        shape_map = graph.layer_input_shapes(model)
        for b in blocks:
            _block_costs(b, shape_map, macs_known)
        self.model, self.blocks, self.active, self.paths = model, blocks, active, paths
        self.before, self.macs_known = before, macs_known
        self.round_to, self.allocation, self.refit, self.ridge = round_to, allocation, refit, ridge
        self.batches = batches
        self._scores = None

    def _channel_scores(self) -> tuple:
        """The channel scores (module docstring), computed on the first call: with
        calibration data its statistics are collected then (one pass of the model).

        Returns:
            ``(grams, orders, shares, means, se_means, fit_batches, held_batches)``:
            per active block (keyed by ``id`` for ``grams``) its project-input ``_Gram``
            (None data-free), its channels by falling score, their shares of the block's
            squared scores, their means and the squeeze-and-excitation input means; the
            calibration batches fitted on and held out (None data-free).
        """
        if self._scores is None:
            self._scores = self._compute_scores()
        return self._scores

    def _compute_scores(self):
        model, active, batches = self.model, self.active, self.batches
        fit_batches = held_batches = None
        grams = None
        if batches is not None:
            n_held = max(1, len(batches) // 8) if len(batches) > 1 else 0
            fit_batches = batches[: len(batches) - n_held] if n_held else batches
            held_batches = batches[len(batches) - n_held :] if n_held else batches
            collected, measured_se = _collect_grams(model, active, fit_batches, MAX_ROWS)
            grams = dict(zip(map(id, active), collected))
        orders, shares, means, se_means = [], [], [], []
        for i, b in enumerate(active):
            if grams:
                mean, std = grams[id(b)].moments()
                se_means.append(measured_se[i])
            else:
                mean, std = _bn_moments(b)
                se_means.append(mean)
                if b.se is not None:  # gated: a = u * gate, the gate taken at the mean input
                    gate = _se_gate(b, mean)
                    mean, std = mean * gate, std * gate
            score2 = (std * np.linalg.norm(_project_kernel(b), axis=1)) ** 2
            total2 = float(score2.sum())
            shares.append(score2 / total2 if total2 > 0 else np.zeros_like(score2))
            orders.append(np.argsort(-score2, kind="stable"))
            means.append(mean)
        return grams, orders, shares, means, se_means, fit_batches, held_batches

    def _totals(self, metric: str) -> tuple[float, list[float]]:
        """The model's total ``metric`` and each active block's cost per hidden channel."""
        total = self.before.macs if metric == "macs" else self.before.total_params
        unit = [b.channel_macs if metric == "macs" else b.channel_params for b in self.active]
        return total, unit

    def floor(self, metric: str = "macs") -> float:
        """The least share of the model's ``metric`` that pruning reaches.

        Every active block keeping ``round_to`` channels, counted from the per-channel
        costs (no model is built).

        Args:
            metric: ``"macs"`` or ``"params"``.

        Returns:
            The share of the original's total, in ``(0, 1]``.

        Raises:
            ValueError: for ``"macs"`` when the model has no fixed input size.
        """
        total, least = self._least(metric)
        return least / max(total, 1)

    def _least(self, metric: str) -> tuple[int, int]:
        """The model's total ``metric`` and the least that pruning leaves of it (a MACs
        budget needs the input size: refused without it)."""
        if metric == "macs" and not self.macs_known:
            raise ValueError(
                "prune_channels: a MACs budget needs a model with a fixed input size; build "
                "it with keras.Input((H, W, C)) or use budget={'params': ...} or keep=."
            )
        total, unit = self._totals(metric)
        rt = self.round_to
        most = sum((b.hidden - _allowed(b.hidden, rt)[-1]) * u for b, u in zip(self.active, unit))
        return total, total - most

    def prune(
        self,
        budget: Mapping[str, float] | None = None,
        keep: float | int | None = None,
        strict: bool = True,
        started: float | None = None,
    ) -> tuple[keras.Model, ChannelPruningReport]:
        """Prune to ``budget`` or ``keep`` (as ``prune_channels``).

        Args:
            budget: As ``prune_channels``.
            keep: As ``prune_channels``.
            strict: As ``prune_channels``.
            started: The ``time.perf_counter()`` the report's ``seconds`` count from
                (default: now).

        Returns:
            ``(new_model, report)`` as ``prune_channels``.

        Raises:
            ValueError: As ``prune_channels``, for the budget and ``keep``.
        """
        t0 = time.perf_counter() if started is None else started
        metric, value = _check_selection(budget, keep)
        model, blocks, active, paths = self.model, self.blocks, self.active, self.paths
        before, macs_known, round_to = self.before, self.macs_known, self.round_to
        allocation, refit, ridge = self.allocation, self.refit, self.ridge
        batches = self.batches
        target = None
        if metric is not None:
            total, least = self._least(metric)
            target = value * total if value <= 1 else value
            if least > target:
                floor = math.ceil(least / max(total, 1) * 1000) / 1000  # met at it
                raise ValueError(
                    f"prune_channels: budget={dict(budget)} cannot be met by pruning hidden "
                    f"channels: keeping round_to={round_to} channels in each of the "
                    f"{len(active)} blocks still leaves {least:,.0f} "
                    f"{'MACs' if metric == 'macs' else 'parameters'} "
                    f"({floor:.3f} of {total:,}); the rest of the network is not pruned. Raise "
                    f"the budget to at least {floor:.3f}, lower round_to, or compress the other "
                    "layers with convert()."
                )

        grams, orders, shares, means, se_means, fit_batches, held_batches = self._channel_scores()
        # -- 3. channels per block -----------------------------------------------------------------
        if metric is not None:
            total, unit = self._totals(metric)
            if allocation == "greedy":
                kept = _greedy(active, orders, shares, unit, total - target, round_to)
            else:
                kept = _uniform(active, unit, total - target, round_to)
        else:
            kept = [
                _keep_count(b.hidden, keep * b.hidden if keep <= 1 else keep, round_to)
                for b in active
            ]

        # -- 4. build ------------------------------------------------------------------------------
        replacements: dict[int, Any] = {}
        rows: dict[int, BlockReport] = {
            id(b): BlockReport(
                name=b.path,
                project=paths.get(id(b.project), b.project.name),
                hidden=b.hidden,
                kept=b.hidden,
                macs_before=b.block_macs if macs_known else None,
                macs_after=b.block_macs if macs_known else None,
                reason=b.reason,
            )
            for b in blocks
        }
        for b, k, order, share, mean, se_mean in zip(active, kept, orders, shares, means, se_means):
            row = rows[id(b)]
            if k >= b.hidden:
                row.reason = "the allocation keeps it whole"
                continue
            sel = np.sort(order[:k])
            p = _project_kernel(b)
            b0 = _w(b.project.bias) if b.project.use_bias else np.zeros(p.shape[1])
            if grams is not None and refit:
                p_aug = np.concatenate([p, b0[None, :]], axis=0)
                kernel, bias = _refit(grams[id(b)], sel, p_aug, float(ridge))
                row.objective = "data+refit"
            else:
                dropped = np.setdiff1d(np.arange(b.hidden), sel)
                kernel, bias = p[sel], b0 + mean[dropped] @ p[dropped]
                row.objective = "data" if grams is not None else "bn"
            replacements.update(_slice_block(b, sel, kernel, bias, se_mean))
            row.kept = k
            row.score_kept = float(share[sel].sum())
            if macs_known:
                row.macs_after = b.block_macs - (b.hidden - k) * b.channel_macs
        try:
            new_model = graph.clone_model(model, replace=lambda la: replacements.get(id(la)))
        except ValueError as err:
            raise ValueError(f"prune_channels: {err}") from err

        # -- 5. measure, report --------------------------------------------------------------------
        try:
            after = model_cost(new_model).total
        except ValueError:
            after = Cost(*_param_counts(new_model), 0)
        calibration = None
        if batches is not None:
            _, whole = cal.measure(model, new_model, {}, held_batches)
            calibration = {
                "fit_samples": int(sum(len(x) for x in fit_batches)),
                "heldout_samples": int(sum(len(x) for x in held_batches)),
                "heldout_is_fit_data": held_batches is fit_batches,
                "refit": bool(refit),
                "ridge": float(ridge),
                **whole,
            }
        if budget is not None:
            selection = f"budget={dict(budget)}, {allocation} allocation"
        else:
            selection = f"keep={keep}"
        selection += f", multiples of {round_to}"
        selection += ", data-aware" if batches is not None else ", data-free"
        report = ChannelPruningReport(
            selection=selection,
            blocks=list(rows.values()),
            total_before=before,
            total_after=after,
            macs_known=macs_known,
            seconds=time.perf_counter() - t0,
            calibration=calibration,
        )
        if metric is not None:
            achieved = after.macs if metric == "macs" else after.total_params
            report.budget_met = bool(achieved <= target)
            if not report.budget_met and strict:
                raise ValueError(
                    f"prune_channels: the budget {dict(budget)} was missed: the pruned model has "
                    f"{achieved:,} {metric} (target {target:,.0f}). Pass strict=False to get it "
                    "anyway (report.budget_met is then False)."
                )
        return new_model, report


def _param_counts(obj) -> tuple[int, int]:
    t = sum(math.prod(w.shape) for w in obj.trainable_weights)
    f = sum(math.prod(w.shape) for w in obj.non_trainable_weights)
    return int(t), int(f)


def _block_costs(block, shape_map: dict, macs_known: bool) -> None:
    """MACs and parameters per hidden channel of ``block`` (each linear in ``H``)."""
    h = block.hidden
    macs = 0
    if macs_known:
        for layer in (block.expand, block.depthwise, block.project, *block.se_convs):
            macs += sum(layer_cost(layer, s).macs for s in shape_map.get(id(layer), []))
    block.block_macs = int(macs)
    block.channel_macs = int(macs) // h
    params = sum(math.prod(w.shape) for w in block.expand.weights)
    params += sum(math.prod(w.shape) for w in block.depthwise.weights)
    params += sum(math.prod(w.shape) for la in [*block.pre, *block.post] for w in la.weights)
    if block.se is not None:  # reduce: r weights per input channel; excite: r + 1 per output
        params += math.prod(block.se.reduce.kernel.shape)
        params += sum(math.prod(w.shape) for w in block.se.excite.weights)
    block.channel_params = params // h + int(block.project.kernel.shape[-1])
