"""Measured training paths: ``tune_implementations``.

A factorized layer (``FactorizedConv2D``) computes its output either through its factor
ops or by rebuilding the dense kernel and running one conv; both give the same function of
the same weights. With ``implementation="auto"`` the path ``fit`` runs is chosen at build
time from a cost model of the ops' forward + backward time. The model is fitted on one
machine and misses costs that depend on the CPU (for example the memory traffic of small
channel counts): on a CPU with AMX, SVD and Tucker-2 layers at ResNet-20's 32x32x16 that
the model trains factorized measured 1.03-1.13x the dense path's training step.

``tune_implementations`` replaces the model by measurement on the machine that trains:
each ``"auto"`` layer's training step (forward with ``training=True``, gradients of the
input and of every factor) is timed both ways at the layer's input shape and the training
batch, interleaved, and the copy's layer gets ``training_implementation`` set to the
faster. The timings are cached per CPU (``deploy.TrainStepTimer``), so tuning the same
layers again costs nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import keras

from .. import graph
from .._table import markdown_table, text_table
from ..deploy.timing import TrainStepTimer, positive_int
from ..layers import FactorizedConv2D

__all__ = [
    "ImplementationChoice",
    "TuningReport",
    "training_path_variants",
    "tune_implementations",
]

_PATHS = ("factorized", "dense")


@dataclass(frozen=True)
class ImplementationChoice:
    """One layer's measured training path.

    Attributes:
        path: The layer's path in the model (``outer/inner`` for nested models).
        layer: The layer's class name.
        input_shapes: The input shapes of its calls (batch axis as in the model).
        factorized_s: Seconds of one training step of the factor ops, summed over calls.
        dense_s: Seconds of one training step of the rebuilt dense conv, summed over calls.
        modelled: What the cost model chose (``"factorized"`` or ``"dense"``).
        chosen: The faster measured path, now the layer's ``training_implementation``.
    """

    path: str
    layer: str
    input_shapes: tuple
    factorized_s: float
    dense_s: float
    modelled: str
    chosen: str

    @property
    def ratio(self) -> float:
        """Factorized over dense step time (below 1: the factor ops train faster)."""
        return self.factorized_s / max(self.dense_s, 1e-12)


@dataclass
class TuningReport:
    """What ``tune_implementations`` measured and set.

    Attributes:
        batch: The batch size the steps were timed at.
        cache_path: The timing cache file.
        measured: Candidates timed in this call (cache misses).
        choices: One ``ImplementationChoice`` per tuned layer, in model order.
        skipped: ``(path, why)`` for each factorized layer left as it is.
    """

    batch: int
    cache_path: Path
    measured: int = 0
    choices: list[ImplementationChoice] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> list[ImplementationChoice]:
        """The choices where measurement overruled the cost model."""
        return [c for c in self.choices if c.chosen != c.modelled]

    def rows(self) -> list[dict]:
        """One dict per tuned layer: path, class, step times (ms), ratio, choices.

        Returns:
            A list of dicts with keys ``layer``, ``class``, ``factorized_ms``,
            ``dense_ms``, ``ratio``, ``modelled`` and ``chosen``.
        """
        return [
            {
                "layer": c.path,
                "class": c.layer,
                "factorized_ms": 1e3 * c.factorized_s,
                "dense_ms": 1e3 * c.dense_s,
                "ratio": c.ratio,
                "modelled": c.modelled,
                "chosen": c.chosen,
            }
            for c in self.choices
        ]

    def to_dict(self) -> dict:
        """The report as JSON-ready data.

        Returns:
            A dict with ``batch``, ``cache_path``, ``measured``, ``layers`` (``rows()``)
            and ``skipped`` (``{"layer", "why"}`` dicts).
        """
        return {
            "batch": self.batch,
            "cache_path": str(self.cache_path),
            "measured": self.measured,
            "layers": self.rows(),
            "skipped": [{"layer": path, "why": why} for path, why in self.skipped],
        }

    _COLUMNS = ("layer", "class", "factorized_ms", "dense_ms", "ratio", "modelled", "chosen")
    _FORMATS = {"factorized_ms": ".3f", "dense_ms": ".3f", "ratio": ".2f"}

    def _head(self) -> str:
        return (
            f"training paths measured at batch {self.batch}: {len(self.choices)} layers, "
            f"{len(self.changed)} changed from the cost model's choice, {self.measured} "
            f"candidates timed (cache {self.cache_path})"
        )

    def to_markdown(self) -> str:
        """The summary, the per-layer table and the layers left as they are, in Markdown.

        Returns:
            The Markdown text, ending with a newline.
        """
        lines = [f"- {self._head()}", "", markdown_table(self.rows(), self._COLUMNS, self._FORMATS)]
        if self.skipped:
            lines += ["", *(f"- left as it is: {path} ({why})" for path, why in self.skipped)]
        return "\n".join(lines).rstrip("\n") + "\n"

    def __str__(self) -> str:
        lines = [self._head(), text_table(self.rows(), self._COLUMNS, self._FORMATS)]
        lines += [f"left as it is: {path} ({why})" for path, why in self.skipped]
        return "\n".join(lines)


def training_path_variants(layer) -> dict[str, keras.layers.Layer]:
    """Unbuilt copies of a factorized layer, one per training path it can run.

    Args:
        layer: A ``FactorizedConv2D`` (built or not).

    Returns:
        ``{"factorized": copy, "dense": copy}``, each copy from ``layer``'s config with
        ``training_implementation`` fixed to that path; a path the layer refuses (a
        batch-normalized ``BasisConv2D`` always runs its factors) is absent, and so is
        ``"factorized"`` where it runs the same dense conv (``NaiveTTConv2D``).
    """
    out = {}
    for path in _PATHS if getattr(layer, "_factor_ops", True) else ("dense",):
        try:
            config = {**layer.get_config(), "training_implementation": path}
            out[path] = type(layer).from_config(config)
        except (ValueError, TypeError):  # from_config wraps the constructor's ValueError
            continue
    return out


def tune_implementations(
    model: keras.Model,
    batch_size: int = 32,
    cache_path: str | os.PathLike | None = None,
    rounds: int = 7,
    copy: bool = True,
) -> tuple[keras.Model, TuningReport]:
    """Choose each factorized layer's training path by timing it on this machine.

    For every ``FactorizedConv2D`` with ``implementation="auto"`` (a layer whose
    ``implementation`` is fixed by the user is left as it is), one training step (forward
    with ``training=True``, then the gradients of ``sum(y**2) / 2`` with respect to the
    input and every factor, in a ``tf.function``) of a fresh copy is timed through the factor
    ops and through the rebuilt dense kernel, at each input shape the layer is called with
    and ``batch_size`` images, interleaved over ``rounds`` rounds (median). A layer called
    at several shapes is timed at each and the summed times compared. The copy of the model
    returned gets ``training_implementation`` set to the faster path (dense on a tie), so
    ``fit`` never runs a layer's factor ops where they measured slower than its dense path.
    A ``training_implementation`` set before (by an earlier tuning, perhaps on another
    machine) is measured again and replaced. Inference (``implementation``) and the weights
    are unchanged: the copy computes the same function. Left as they are, and listed in
    ``report.skipped``: layers that train one way only (a batch-normalized ``BasisConv2D``
    always runs its factors, a ``NaiveTTConv2D`` always its dense conv), layers without a
    known input size, and layers inside a custom layer of a graph model (which is copied
    whole from its config).

    Args:
        model: A built ``keras.Model`` (graph or subclassed) whose input size is known.
        batch_size: The batch size ``fit`` will run (the dense path rebuilds its kernel once
            per step, so its cost per image falls with the batch).
        cache_path: The JSON timing cache; None: ``train_step_timings.json`` in the
            package's cache directory.
        rounds: The number of interleaved timing rounds.
        copy: Tune a copy (default: the model passed in is not modified). ``False`` sets
            the layers of ``model`` itself: for a model you own and would copy only to
            throw the original away (one ``convert`` just returned).

    Returns:
        ``(tuned, report)``: the tuned model (a copy, or ``model`` with ``copy=False``;
        compile it before ``fit``) and a ``TuningReport`` with each layer's step times and
        choice.

    Raises:
        ValueError: When ``batch_size`` or ``rounds`` is not a positive int, the Keras
            backend is not TensorFlow (training steps are timed in TensorFlow), ``model``
            is not a built ``keras.Model``, or the model cannot be copied (a subclassed
            model without a ``get_config`` that rebuilds it); all before any timing.
    """
    who = "tune_implementations"
    batch_size = positive_int(who, "batch_size", batch_size)
    rounds = positive_int(who, "rounds", rounds)
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(
            f"{who}: model must be a built keras.Model, got {type(model).__name__}; call it "
            "on an input (or build it) first."
        )
    timer = TrainStepTimer(cache_path, batch=batch_size, rounds=rounds)
    # first: a model that cannot be copied fails before timing
    tuned = graph.clone_model(model) if copy else model
    walked = list(graph.walk(model))
    copied = list(graph.walk(tuned)) if copy else walked
    if [type(la) for _, la in walked] != [type(la) for _, la in copied]:
        raise ValueError(f"{who}: the copy of '{model.name}' does not have the original's layers.")
    report = TuningReport(batch=timer.batch, cache_path=timer.cache_path)
    shape_map = graph.layer_input_shapes(model)
    for (path, layer), (_, twin) in zip(walked, copied):
        if not isinstance(layer, FactorizedConv2D):
            continue
        if layer.implementation != "auto":
            report.skipped.append((path, f"implementation={layer.implementation!r} is fixed"))
            continue
        shapes = shape_map.get(id(layer), [])
        if not shapes or any(d is None for s in shapes for d in s[1:]):
            report.skipped.append((path, "no known input size"))
            continue
        variants = training_path_variants(layer)
        if set(variants) != set(_PATHS) or any(
            v.implementation_for(shapes[0], training=True) != p for p, v in variants.items()
        ):
            report.skipped.append((path, "trains one way only"))
            continue
        cands = {p: [v] for p, v in variants.items()}
        total = dict.fromkeys(_PATHS, 0.0)
        for shape in shapes:
            for p, seconds in timer.time(cands, shape).items():
                total[p] += seconds
        choice = "factorized" if total["factorized"] < total["dense"] else "dense"
        modelled = type(layer).from_config({**layer.get_config(), "training_implementation": None})
        report.choices.append(
            ImplementationChoice(
                path=path,
                layer=type(layer).__name__,
                input_shapes=tuple(tuple(s) for s in shapes),
                factorized_s=total["factorized"],
                dense_s=total["dense"],
                modelled=modelled.implementation_for(shapes[0], training=True),
                chosen=choice,
            )
        )
        twin.training_implementation = choice  # the copy (or, copy=False, the model)
        twin.resolve_implementations(shapes[0])
    walked_ids = {id(la) for _, la in walked}
    for path, layer in graph.walk_all(model):
        if isinstance(layer, FactorizedConv2D) and id(layer) not in walked_ids:
            report.skipped.append((path, "inside a custom layer, copied whole from its config"))
    report.measured = timer.measured
    return tuned, report
