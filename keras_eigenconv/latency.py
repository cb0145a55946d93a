"""Compress to a latency on a target runtime, not to a MAC count.

``convert(model, method=..., budget={"latency": x}, target="litert-int8")`` plans, per
layer, a (method, rank) pair or "keep the original" so that the model's latency on the
target is at most ``x`` times the original's, with the least error; then it builds the
plan with ``compress.convert`` (a per-layer method and rank). Any other budget goes
straight to ``compress.convert``.

This module sits above ``compress`` (which plans by MACs and never times anything) and
``deploy`` (which owns LiteRT and its timing cache): the rule that those two never import
each other stays, and the planner joins them.

The latency model (per layer ``l``, ``T`` measured in LiteRT batch 1 on this machine):

- ``T_orig(l)``: the layer alone (``deploy.timing.LiteRTTimer``, cached by op, shape,
  precision and threads);
- ``T(l, m, r)``: the replacement at rank ``r`` alone, in its fastest inference arrangement
  (``deploy.candidate_arrangements`` without the folded dense one, which is "keep");
- ``rest = max(0, T_model - sum_l T_orig(l))``: the whole original model measured once,
  less its converted layers: everything that does not change;
- ``latency(plan) = rest + sum_l T(l, plan(l))``, and the budget is
  ``latency(plan) <= x * (rest + sum_l T_orig(l))``.

Ranks offered per (layer, method) are a few hardware-friendly sizes (multiples of 8, 16
or 32 where the layer is wide enough, see ``latency_ranks``). With ``timing="measure"``
every offered candidate is timed; with ``timing="predict"`` they are predicted by the cost
model fitted to the timing cache (``deploy.CostModel.from_cache`` for the target's
precision and threads) and only the chosen plan is timed, re-planned with the measured
times until it meets the budget (at most three rounds). The allocator is
``compress.ranks.allocate_budget`` with latency as the cost and the squared relative error
(kernel, or response error with ``calibration_data``) as the error.

The layers' isolated timings do not add up to the model's (measured on a quiet machine: a
small ResNet's int8 plan whose per-layer sum was 0.759 of the original measured 0.476 as a
whole; per-op interpreter and quantize/dequantize overheads, caches and threading
differ). So the plan is then checked where it counts: the converted model is rewritten for
inference, exported and timed interleaved against the original (``paired_ratio``: the
median of per-round ratios), and the share the allocator plans at is corrected by
interpolating the measured ``(share, ratio)`` points (the original, ``(1, 1)``, is one) until
the measured ratio is at most ``x`` and within 0.05 of it, or ``feedback_rounds`` models
were measured; the measured plan closest to ``x`` from below is confirmed with as many
rounds again, and if it confirms above ``x`` the next one measured below ``x`` is confirmed
instead (``_confirm_closest``); the confirmed plan closest to ``x`` from below is returned.

The whole-model measurements (the per-layer table with the original's seconds, and each
measured plan's interleaved rounds) are kept next to the timing cache in
``<cache>.models.json``, keyed by the architecture, target, methods and options (not the
weights' values, which latency does not depend on: see ``_architecture_key``), so an
identical later call replays them and exports and times no model
(``LatencyPlan.model_timings`` and ``LatencyPlan.reused`` count both).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from . import graph
from ._table import markdown_table
from .compress import calibration as cal
from .compress import convert as compress_convert
from .compress import ranks as rk
from .compress.channels import ChannelPruner, prunable_blocks
from .compress.channels import prune_channels as compress_prune_channels
from .compress.convert import shared_work, spill_shared
from .compress.registry import available_methods, get_method
from .compress.report import Progress
from .deploy.litert import convert_for_timing, make_interpreter, random_representative
from .deploy.rewrite import candidate_arrangements, prepare_for_inference
from .deploy.timing import (
    CostModel,
    LiteRTTimer,
    TimingCache,
    TrainStep,
    TrainStepTimer,
    interleaved_samples,
    machine_info,
    time_interleaved,
)
from .training.implementations import training_path_variants, tune_implementations

__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "TARGETS",
    "LatencyPlan",
    "PlannedLayer",
    "Target",
    "convert",
    "latency_ranks",
    "parse_target",
    "prune_channels",
]

RUNTIMES = ("litert", "train")
PRECISIONS = ("fp32", "fp16", "int8")
_QUANTIZE = {"fp32": None, "fp16": "float16", "int8": "int8"}
TIMINGS = ("measure", "predict")


@dataclass(frozen=True)
class Target:
    """Where a latency is measured: a runtime, a precision, threads and a batch size.

    Attributes:
        runtime: ``"litert"`` (LiteRT with XNNPACK, the ``.tflite`` an Android app ships) or
            ``"train"`` (a TensorFlow training step at ``batch``, as ``fit`` runs it:
            ``deploy.TrainStepTimer`` per layer, ``deploy.TrainStep`` for the whole model;
            precision and threads are not used).
        precision: ``"fp32"``, ``"fp16"`` (float16 weights) or ``"int8"`` (full integer
            quantization, random representative data).
        threads: The interpreter's thread count.
        batch: The batch size (LiteRT timing is batch 1).

    Raises:
        ValueError: When a field is not one of the values above.
    """

    runtime: str = "litert"
    precision: str = "fp32"
    threads: int = 2
    batch: int = 1

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise ValueError(f"Target: runtime must be one of {RUNTIMES}, got {self.runtime!r}.")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"Target: precision must be one of {PRECISIONS}, got {self.precision!r}."
            )
        for name in ("threads", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Target: {name} must be an int >= 1, got {v!r}.")
        if self.runtime == "litert" and self.batch != 1:
            raise ValueError(
                f"Target: LiteRT latencies are measured at batch 1, got batch={self.batch}."
            )

    @property
    def quantize(self) -> str | None:
        """The ``deploy`` quantization mode of the precision (``None`` for fp32)."""
        return _QUANTIZE[self.precision]

    def __str__(self) -> str:
        if self.runtime == "train":
            return f"train (batch {self.batch})"
        return f"litert-{self.precision} ({self.threads} threads)"


TARGETS = {
    "litert-fp32": Target("litert", "fp32"),
    "litert-fp16": Target("litert", "fp16"),
    "litert-int8": Target("litert", "int8"),
    "train": Target("train", "fp32", batch=32),
}


def parse_target(target) -> Target:
    """Turn a target shorthand or record into a ``Target``.

    Args:
        target: A ``Target``, or one of ``TARGETS``' names (``"litert-fp32"``,
            ``"litert-fp16"``, ``"litert-int8"``, ``"train"``).

    Returns:
        The ``Target``.

    Raises:
        ValueError: When ``target`` is neither.
    """
    if isinstance(target, Target):
        return target
    if isinstance(target, str) and target in TARGETS:
        return TARGETS[target]
    raise ValueError(
        f"target={target!r} must be one of {sorted(TARGETS)} or a "
        "keras_eigenconv.Target(runtime, precision, threads, batch)."
    )


def latency_ranks(max_rank: int, count: int = 6) -> list[int]:
    """The ranks a latency plan offers for a layer: a few hardware-friendly sizes.

    At shares ``1/16, 1/8, 1/4, 3/8, 1/2, 3/4`` of ``max_rank`` (the first ``count``
    of the spread), each rounded to a multiple of 32 (from 128 up), 16 (from 48 up) or 8
    (layers of full rank 16 or more), or to an int for narrower layers; only ranks below
    ``max_rank``.

    Args:
        max_rank: The layer's full rank.
        count: How many shares to use, at most 6.

    Returns:
        The distinct ranks, ascending.
    """
    shares = (0.0625, 0.125, 0.25, 0.375, 0.5, 0.75)
    if count < len(shares):
        shares = tuple(
            shares[round(i * (len(shares) - 1) / max(count - 1, 1))] for i in range(count)
        )
    out = set()
    for f in shares:
        r = f * max_rank
        step = 32 if r >= 128 else 16 if r >= 48 else 8 if max_rank >= 16 else 1
        out.add(max(step, int(round(r / step)) * step))
    return sorted(r for r in out if 1 <= r < max_rank)


@dataclass
class PlannedLayer:
    """One layer of a latency plan.

    Attributes:
        name: The layer's path in the model.
        method: The chosen method, or None to keep the original.
        rank: The chosen rank, or None.
        error: The squared relative error of the choice (kernel, or response with data).
        original_s: The original layer's measured seconds on the target (LiteRT at batch 1,
            or one training step at the target's batch).
        predicted_s: The seconds the plan used for the choice (measured or predicted).
        measured_s: The measured seconds of the choice (None when not timed).
        candidates: How many (method, rank) candidates were offered.
    """

    name: str
    method: str | None
    rank: int | None
    error: float
    original_s: float
    predicted_s: float
    measured_s: float | None
    candidates: int


@dataclass
class LatencyPlan:
    """The per-layer plan of a latency budget and its predicted and measured totals.

    Attributes:
        target: The ``Target``.
        budget: The latency share ``x``.
        timing: ``"measure"`` or ``"predict"``.
        model_s: The whole original model's measured seconds.
        rest_s: The seconds of what the plan does not change (``model_s`` less the
            converted layers' originals, at least 0).
        layers: One ``PlannedLayer`` per candidate layer.
        rounds: Planning rounds (``"predict"``: re-planned with the measured times).
        timed: Candidates timed (cache misses included or not) by the planner.
        seconds: The planner's wall time.
        share: The share of the planned original latency this plan was allocated at (the
            budget, or the share the measured feedback corrected it to).
        feedback: One dict per whole-model measurement: the ``share`` planned at, the
            plan's ``planned_ratio`` and the measured ``ratio`` (median over interleaved
            rounds of converted/original), its ``p10``/``p90`` and the median seconds.
        measured: The ``feedback`` entry of this plan, its ratio re-timed with the
            rounds of a second measurement added, and of a third when the medians of the
            two disagree by more than 0.05 (``"confirmed": True``); None without feedback
            rounds.
        floor: The least planned share of the original's latency (per-layer sums): every
            candidate layer at its fastest offered choice. A budget below it is refused by
            the plan, and measured as a whole model first unless it is below 0.6 of it.
        model_timings: Whole models this call exported and timed (the original's seconds
            and each measured plan, confirmations included).
        reused: Whole-model measurements this call took from the timing cache's
            ``.models.json`` file instead of timing them (the per-layer table and the
            original's seconds count as one; see ``convert``).
    """

    target: Target
    budget: float
    timing: str
    model_s: float
    rest_s: float
    layers: list[PlannedLayer] = field(default_factory=list)
    rounds: int = 1
    timed: int = 0
    seconds: float = 0.0
    share: float | None = None
    feedback: list = field(default_factory=list)
    measured: dict | None = None
    floor: float | None = None
    model_timings: int = 0
    reused: int = 0

    @property
    def original_s(self) -> float:
        """The plan's original latency: ``rest + sum of the original layers``."""
        return self.rest_s + sum(p.original_s for p in self.layers)

    @property
    def planned_s(self) -> float:
        """The plan's latency with the seconds it chose by."""
        return self.rest_s + sum(p.predicted_s for p in self.layers)

    @property
    def measured_plan_s(self) -> float:
        """The plan's latency with each layer's measured seconds (originals when kept)."""
        return self.rest_s + sum(
            p.measured_s if p.measured_s is not None else p.predicted_s for p in self.layers
        )

    @property
    def ratio(self) -> float:
        """The planned latency ratio (measured seconds per layer)."""
        return self.measured_plan_s / max(self.original_s, 1e-12)

    @property
    def measured_ratio(self) -> float | None:
        """The whole converted model's measured latency ratio (None without feedback)."""
        return None if self.measured is None else self.measured["ratio"]

    @property
    def met(self) -> bool:
        """Whether the budget is met: by the whole converted model's measured ratio when it
        was measured, else by the plan with the measured per-layer seconds."""
        if self.measured is not None:
            return self.measured["ratio"] <= self.budget * (1 + 1e-9)
        return self.measured_plan_s <= self.budget * self.original_s * (1 + 1e-9)

    @property
    def prediction_error(self) -> float | None:
        """The median relative difference |predicted - measured| / measured over the
        replaced layers (None when none was replaced or timed)."""
        d = [
            abs(p.predicted_s - p.measured_s) / max(p.measured_s, 1e-12)
            for p in self.layers
            if p.method is not None and p.measured_s is not None
        ]
        return float(np.median(d)) if d else None

    def to_dict(self) -> dict:
        """The plan as a JSON-ready dict.

        Returns:
            The fields, the totals and one dict per layer.
        """
        return {
            "target": str(self.target),
            "budget": self.budget,
            "timing": self.timing,
            "model_s": self.model_s,
            "rest_s": self.rest_s,
            "original_s": self.original_s,
            "planned_s": self.planned_s,
            "measured_plan_s": self.measured_plan_s,
            "ratio": self.ratio,
            "met": self.met,
            "measured_ratio": self.measured_ratio,
            "share": self.share,
            "floor": self.floor,
            "model_timings": self.model_timings,
            "reused": self.reused,
            "feedback": list(self.feedback),
            "prediction_error": self.prediction_error,
            "rounds": self.rounds,
            "timed": self.timed,
            "seconds": self.seconds,
            "layers": [vars(p).copy() for p in self.layers],
        }

    def to_markdown(self) -> str:
        """The plan as a Markdown table, one row per layer, then the totals.

        Returns:
            The Markdown text.
        """
        rows = [
            {
                "layer": p.name,
                "method": p.method or "keep",
                "rank": p.rank,
                "original us": p.original_s * 1e6,
                "predicted us": p.predicted_s * 1e6,
                "measured us": None if p.measured_s is None else p.measured_s * 1e6,
                "rel. error": math.sqrt(max(p.error, 0.0)),
            }
            for p in self.layers
        ]
        cols = list(rows[0]) if rows else ["layer"]
        fmts = {"original us": ".0f", "predicted us": ".0f", "measured us": ".0f"}
        fmts["rel. error"] = ".3f"
        pe = self.prediction_error
        return (
            markdown_table(rows, cols, fmts)
            + f"\n\nTarget {self.target}, budget {self.budget}: planned latency ratio "
            f"{self.ratio:.3f} (rest {self.rest_s * 1e3:.2f} ms of {self.original_s * 1e3:.2f} "
            f"ms)"
            + (
                ""
                if self.measured is None
                else f"; whole model measured {self.measured['ratio']:.3f} "
                f"(p10-p90 {self.measured['p10']:.3f}-{self.measured['p90']:.3f}) after "
                f"{len(self.feedback)} measurement(s)"
            )
            + f", {'met' if self.met else 'MISSED'}; per-layer prediction vs measurement: "
            + ("n/a" if pe is None else f"median {pe:.1%}")
            + "\n"
        )

    def __str__(self) -> str:
        return self.to_markdown()


# ---- planning --------------------------------------------------------------------------


def _matches(spec, path: str, layer) -> bool:
    if spec is None:
        return False
    if isinstance(spec, (list, tuple, set, frozenset)):
        return any(_matches(s, path, layer) for s in spec)
    if isinstance(spec, str):
        return fnmatch.fnmatchcase(path, spec) or fnmatch.fnmatchcase(layer.name, spec)
    if isinstance(spec, type):
        return isinstance(layer, spec)
    return bool(spec(layer))


def _eligible(layer, m, path, include, exclude) -> bool:
    if type(layer) is not keras.layers.Conv2D or not isinstance(layer, m.source_types()):
        return False
    if layer.groups != 1 or layer.data_format != "channels_last":
        return False
    if m.spatial_only and tuple(layer.kernel_size) == (1, 1):
        return False
    if include is not None and not _matches(include, path, layer):
        return False
    return not (exclude is not None and _matches(exclude, path, layer))


def _budgetable(m) -> bool:
    """Whether a latency plan can offer ``m`` at int ranks with an error per rank: a
    spectrum method, or a layer-ranked one whose int-rank spectrum is an error proxy
    (``budget_spectrum``: Tucker-2 at ``R1 = R2 = r``, as MAC budgets use it)."""
    return m.rank_selection == "spectrum" or m.budget_spectrum


def _candidate_sources(model, methods, include, exclude, skip_first) -> list:
    """``(path, layer, [methods that may replace it])`` for every layer some method may
    replace, in graph order (the first conv left out with ``skip_first``)."""
    walked = list(graph.walk(model))
    first = next((id(lay) for _, lay in walked if isinstance(lay, keras.layers.Conv2D)), None)
    out = []
    for path, layer in walked:
        if skip_first and id(layer) == first:
            continue
        eligible = [m for m in methods if _eligible(layer, m, path, include, exclude)]
        if eligible:
            out.append((path, layer, eligible))
    return out


def _candidate_layers(m, layer, rank, opts, shape):
    """The fastest-arrangement candidates (plain layers) of ``m`` at ``rank`` (timing only:
    fresh weights)."""
    new = m.candidate(layer, rank, opts)
    new.implementation = "factorized"
    new(keras.Input(tuple(shape[1:]), batch_size=1))
    arrs = candidate_arrangements(new)
    arrs.pop("dense", None)
    return arrs


def _interpreter(model, target: Target):
    """A LiteRT interpreter of ``model`` as the target runs it (random representative data
    for int8: timing only); for the ``"train"`` target a ``deploy.TrainStep`` (one training
    step of a copy of ``model`` on a fixed random batch of ``target.batch``)."""
    if target.runtime == "train":
        return TrainStep(model, batch=target.batch)
    shape = tuple(model.inputs[0].shape)
    content = convert_for_timing(model, target.quantize, random_representative((1, *shape[1:])))
    return make_interpreter(content, target.threads)


def paired_ratio(original, candidate, rounds: int = 15, max_spread: float = 0.25) -> dict:
    """The latency ratio of two LiteRT interpreters, timed interleaved, per round.

    Each round times both (about 20 ms each); the ratio of a round is the candidate's
    seconds per call over the original's in that round, so slow phases of a noisy machine
    hit both alike. The median over rounds is the estimate, p10 and p90 its spread; while
    the spread ``p90 - p10`` exceeds ``max_spread``, ``rounds`` more rounds are added (at
    most twice).

    Args:
        original: The original model's interpreter (anything with ``invoke()``).
        candidate: The candidate's interpreter.
        rounds: The number of interleaved rounds (per try).
        max_spread: The p10-p90 width of the ratios above which more rounds are timed.

    Returns:
        ``{"ratio", "p10", "p90", "original_s", "candidate_s", "rounds"}`` (ratios, median
        seconds per call, rounds timed).
    """
    o, c = _paired_samples(original, candidate, rounds, max_spread)
    return _ratio_stats(o, c)


def _paired_samples(original, candidate, rounds: int, max_spread: float, o=(), c=()):
    """Per-round seconds of both (appended to ``o``, ``c``), with more rounds (at most
    twice) while the p10-p90 width of the per-round ratios exceeds ``max_spread``."""
    o, c = list(o), list(c)
    for attempt in range(3):
        s = interleaved_samples(
            {"o": original.invoke, "c": candidate.invoke}, rounds=rounds, warmup=2 - attempt
        )
        o += s["o"]
        c += s["c"]
        p10, p90 = np.percentile(np.asarray(c) / np.asarray(o), [10, 90])
        if p90 - p10 <= max_spread:
            break
    return o, c


def _confirmed_samples(original, candidate, o, c):
    """A measurement's rounds ``o``, ``c`` and as many again; when the medians of the
    per-round ratios of the two sets differ by more than 0.05 (a burst of load, on a shared
    machine, that hit one set), a third set as large is added, so the median of all the
    rounds follows the two sets that agree."""
    first = len(o)
    o, c = _paired_samples(original, candidate, first, math.inf, o, c)
    r = np.asarray(c) / np.asarray(o)
    if abs(float(np.median(r[:first])) - float(np.median(r[first:]))) > 0.05:
        o, c = _paired_samples(original, candidate, first, math.inf, o, c)
    return o, c


def _confirm_closest(measured: list, x: float, confirm):
    """Choose among measured models and confirm the choice: the one measured closest to
    ``x`` from below (else the fastest) is confirmed (``confirm(item)`` returns its
    confirmed ``{"ratio", ...}``); if it confirms above ``x``, the next one measured below
    ``x`` is confirmed too, and the confirmed one closest to ``x`` from below is kept (else
    the confirmed fastest). ``convert`` and ``prune_channels`` choose this way.

    Args:
        measured: ``[(ratio, item)]``, one per distinct model (``ratio``: its first
            measurement).
        x: The latency budget (a ratio).
        confirm: ``fn(item) -> dict`` with the confirmed ``"ratio"``.

    Returns:
        ``(item, confirmed)``: the chosen item and what ``confirm`` returned for it.
    """
    order = sorted(measured, key=lambda m: (m[0] > x, -m[0] if m[0] <= x else m[0]))
    confirmed = []
    for ratio, item in order[:2]:  # a second one only when the first confirms above x
        if confirmed and ratio > x:
            break
        confirmed.append((item, confirm(item)))
        if confirmed[-1][1]["ratio"] <= x:
            break
    ok = [cm for cm in confirmed if cm[1]["ratio"] <= x]
    if ok:
        return max(ok, key=lambda cm: cm[1]["ratio"])
    return min(confirmed, key=lambda cm: cm[1]["ratio"])


def _ratio_stats(o, c) -> dict:
    r = np.asarray(c) / np.asarray(o)
    p10, p90 = np.percentile(r, [10, 90])
    return {
        "ratio": float(np.median(r)),
        "p10": float(p10),
        "p90": float(p90),
        "original_s": float(np.median(o)),
        "candidate_s": float(np.median(c)),
        "rounds": len(r),
    }


@dataclass
class _Table:
    """The timed candidates of every layer: what an allocation at any share needs."""

    target: Target
    rows: list  # (path, layer, shapes, original_s, [(m, r, err2, opts, cost)], cands)
    rest: float
    model_s: float
    timer: object
    predictor: object
    seconds_fn: object
    measured: dict = field(default_factory=dict)
    timed: int = 0
    records: _Records | None = None
    reused: int = 0  # whole-model measurements taken from the records
    model_timings: int = 0  # whole models timed by this call

    @property
    def original_total(self) -> float:
        return self.rest + sum(t[3] for t in self.rows)

    def floor_share(self) -> float:
        """The least planned share: every layer at its fastest offered choice."""
        fastest = sum(min([t[3], *(o[4] for o in t[4])]) for t in self.rows)
        return (self.rest + fastest) / max(self.original_total, 1e-12)


# ---- whole-model measurements kept across calls ----------------------------------------

_RECORDS_VERSION = 2


@functools.cache
def _machine() -> dict:
    """What a timing depends on besides the model: the library versions and the CPU, its
    model and the features that select kernels (read once per process)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    info = machine_info()
    return {
        "keras_eigenconv": installed("keras-eigenconv"),
        "tensorflow": installed("tensorflow"),
        "machine": info["machine"],
        "cpu": info["cpu"],
        "cpus": info["cpus"],
        "isa": info["isa"],
    }


def _architecture_key(model, target: Target, names, settings: dict) -> str | None:
    """A fingerprint of what a latency plan's timings depend on, or None when it cannot
    be given (then nothing is kept or reused).

    The timings of a layer, of the original model and of a converted model depend on the
    architecture (a graph model's config: layers, their configs and connections, and the
    weights' paths, shapes and dtypes), the target, the offered methods and ranks and the
    options of the built layers, the library versions (LiteRT, Keras, TensorFlow, this
    package) and the CPU (model, core count, architecture and the features that select
    kernels, e.g. AVX512-VNNI, AMX), not on the weights' values: dense float kernels run the
    same instructions whatever their values (fp32 and fp16; denormal values, which can slow
    float math on x86, are the case this ignores), and int8 models run the same integer
    kernels whatever their scales (timing uses random representative data anyway).
    Subclassed models (whose ``call`` is not in their config) and settings that are not
    plain JSON (e.g. a predicate in ``include``)
    give None.
    """
    if not graph.is_graph_model(model):
        return None
    try:
        from ai_edge_litert import __version__ as litert_version
    except ImportError:  # the train target needs no LiteRT
        litert_version = None
    spec = {
        "version": _RECORDS_VERSION,
        "config": model.get_config(),
        "weights": [[w.path, list(w.shape), str(w.dtype)] for w in model.weights],
        "target": dataclasses.asdict(target),
        "methods": list(names),
        "settings": settings,
        "keras": keras.__version__,
        "litert": litert_version,
        # another library version or another CPU: measured again, never replayed
        **_machine(),
    }
    try:
        text = json.dumps(spec, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class _Records:
    """Whole-model measurements of one architecture (``_architecture_key``) on one target,
    kept across calls in ``<timing cache>.models.json`` (a ``deploy.TimingCache``: safe
    under threads and processes, corrupt or unwritable files warned about, never fatal).

    Entries: ``"table"`` (seconds: the original model's; features: every candidate layer's
    original and offered seconds) and one per measured plan (``plan``: the sorted
    ``[path, method, rank]`` of its replaced layers; seconds: the converted model's;
    features: the measurement's statistics, and ``confirmed_*`` ones once confirmed).
    """

    def __init__(self, cache_path, architecture: str | None):
        self.architecture = architecture
        path = Path(cache_path)
        self.cache = (
            TimingCache(path.with_name(f"{path.stem}.models{path.suffix or '.json'}"))
            if architecture is not None
            else None
        )
        self.entries = self.cache.load() if self.cache is not None else {}

    def _key(self, what: str, plan=None) -> str:
        return json.dumps(
            {"architecture": self.architecture, "what": what, "plan": plan}, sort_keys=True
        )

    def get(self, what: str, plan=None) -> dict | None:
        """The stored entry, or None."""
        return None if self.cache is None else self.entries.get(self._key(what, plan))

    def put(self, what: str, seconds: float, features: dict, plan=None) -> None:
        """Store an entry (merged into the file)."""
        if self.cache is None:
            return
        entry = {"seconds": float(seconds), "features": {k: float(v) for k, v in features.items()}}
        self.entries = self.cache.save({self._key(what, plan): entry})


def _table_features(rows, model_s: float) -> dict:
    """The per-layer seconds of a table as ``"<path>|orig"`` and ``"<path>|<i>|<method>|
    <rank>"`` features, and the original model's as ``"model_s"``."""
    out = {"model_s": model_s}
    for path, _layer, _shapes, orig, opts_list, _ in rows:
        out[f"{path}|orig"] = orig
        for i, (m, r, _err2, _opts, cost) in enumerate(opts_list):
            out[f"{path}|{i}|{m.name}|{r}"] = cost
    return out


def _time_table(
    model,
    methods,
    target,
    timing,
    include,
    exclude,
    skip_first,
    options,
    statistics_for,
    cache_path,
    ranks_per_layer,
    original_interpreter,
    show_progress: bool = False,
    architecture: str | None = None,
    implementation: str = "auto",
) -> _Table:
    """The per-layer timings (``original_interpreter()`` gives the original's interpreter,
    made only if it is timed); with ``architecture`` (``timing="measure"`` only) a table
    kept by an earlier call on the same architecture is reused instead of timed. On the
    train target, ``implementation`` is the replacements' (``"auto"``: both training paths
    are timed and the faster counts, as ``tune_implementations`` then builds)."""
    timer = (
        TrainStepTimer(cache_path, batch=target.batch)
        if target.runtime == "train"
        else LiteRTTimer(cache_path, num_threads=target.threads, quantize=target.quantize)
    )
    predictor = (
        CostModel.from_cache(cache_path, quantize=target.quantize, num_threads=target.threads)
        if timing == "predict"
        else None
    )
    shape_map = graph.layer_input_shapes(model)
    entries = []  # (path, layer, shapes, [(method, rank, err2, opts)])
    for path, layer, eligible in _candidate_sources(model, methods, include, exclude, skip_first):
        shapes = shape_map.get(id(layer), [])
        if not shapes or not all(d is not None for s in shapes for d in s[1:]):
            continue
        offers = []
        for m in eligible:
            opts = m.merged_options(options)
            stats = statistics_for(layer, m, opts)
            s = (
                m.data_spectrum(layer, stats, opts)
                if stats is not None
                else m.spectrum(layer, opts)
            )
            err2 = rk.relative_errors(s) ** 2
            for r in latency_ranks(len(s), ranks_per_layer):
                offers.append((m, r, float(err2[r - 1]), opts))
        spill_shared(getattr(layer, "kernel", None))  # one kernel held at a time
        if offers:
            entries.append((path, layer, shapes, offers))
    table = _Table(target, [], 0.0, 0.0, timer, predictor, None)
    table.records = _Records(timer.cache_path, architecture if timing == "measure" else None)
    stored = table.records.get("table")
    feats = stored["features"] if stored is not None else {}
    if "model_s" in feats and all(
        f"{path}|orig" in feats
        and all(f"{path}|{i}|{m.name}|{r}" in feats for i, (m, r, _, _) in enumerate(offers))
        for path, _, _, offers in entries
    ):  # kept by an earlier call: nothing to build or time
        for path, layer, shapes, offers in entries:
            costs = [feats[f"{path}|{i}|{o[0].name}|{o[1]}"] for i, o in enumerate(offers)]
            table.rows.append(
                (
                    path,
                    layer,
                    shapes,
                    feats[f"{path}|orig"],
                    [(*o, c) for o, c in zip(offers, costs)],
                    None,
                )
            )
        table.model_s = feats["model_s"]
        table.rest = max(0.0, table.model_s - sum(t[3] for t in table.rows))
        table.reused += 1
        if show_progress:
            sys.stderr.write(
                f"timing on {target}: {len(entries)} layers' candidates and the original "
                f"model kept by an earlier call ({table.records.cache.path})\n"
            )
            sys.stderr.flush()
        return table

    def seconds(source, candidates, shapes):
        """The fastest arrangement of each candidate, its times summed over the layer's
        calls (a layer runs one arrangement at all of its input shapes)."""
        flat = {f"{n}|{a}": lays for n, arrs in candidates.items() for a, lays in arrs.items()}
        summed = dict.fromkeys(flat, 0.0)
        for shape in shapes:
            got = source.time(flat, shape)
            if source is timer:
                table.timed += len(flat)
            for k in flat:
                summed[k] += got[k]
        return {n: min(summed[f"{n}|{a}"] for a in arrs) for n, arrs in candidates.items()}

    table.seconds_fn = seconds
    prog = Progress(len(entries), show_progress, prefix=f"timing on {target}")
    for path, layer, shapes, offers in entries:
        prog.step(path)
        cands = {
            # train: the compressed layer itself, timed as it trains through its factor ops
            # and through its rebuilt dense kernel (the built model trains the faster way:
            # training.tune_implementations); LiteRT: its inference arrangements
            i: (
                _training_paths(m.candidate(layer, r, opts), layer, implementation)
                if target.runtime == "train"
                else _candidate_layers(m, layer, r, opts, shapes[0])
            )
            for i, (m, r, _, opts) in enumerate(offers)
        }
        if predictor is None:  # the original and its candidates timed interleaved together
            costs = seconds(timer, {"orig": {"orig": [layer]}, **cands}, shapes)
            orig = costs.pop("orig")
        else:
            orig = seconds(timer, {"orig": {"orig": [layer]}}, shapes)["orig"]
            costs = seconds(predictor, cands, shapes)
        table.rows.append(
            (path, layer, shapes, orig, [(*o, costs[i]) for i, o in enumerate(offers)], cands)
        )
    table.model_s = time_interleaved({"m": original_interpreter().invoke}, rounds=7)["m"]
    table.model_timings += 1
    table.rest = max(0.0, table.model_s - sum(t[3] for t in table.rows))
    table.records.put("table", table.model_s, _table_features(table.rows, table.model_s))
    return table


def _training_paths(candidate, source, implementation: str) -> dict[str, list]:
    """``{path: [layer]}``: the candidate as the converted layer trains it (the source's
    activation; ``implementation`` when fixed), once per training path it can run when
    ``implementation`` is ``"auto"`` (``training.training_path_variants``)."""
    config = {
        **candidate.get_config(),
        "activation": source.get_config().get("activation"),
        "implementation": implementation,
    }
    candidate = type(candidate).from_config(config)
    if implementation != "auto":
        return {implementation: [candidate]}
    paths = {p: [v] for p, v in training_path_variants(candidate).items()}
    return paths or {"train": [candidate]}


def _allocate(table: _Table, share: float, budget: float, timing: str):
    """Allocate at ``share`` of the table's original latency (re-planned with measured
    times in ``"predict"`` mode); returns ``(plan, {layer id: option or None})``."""
    t0 = time.perf_counter()
    goal = share * table.original_total
    rounds = 0
    while True:
        rounds += 1
        if table.original_total <= goal * (1 + 1e-9):  # keeping every layer fits: no error
            alloc = {id(t[1]): None for t in table.rows}
            break
        items = []
        for _path, layer, _shapes, orig, opts_list, _ in table.rows:
            c = np.array(
                [table.measured.get((id(layer), i), o[4]) for i, o in enumerate(opts_list)]
            )
            items.append(
                rk.BudgetItem(
                    id(layer),
                    np.arange(len(opts_list)),
                    np.array([o[2] for o in opts_list]),
                    c,
                    float(orig),
                )
            )
        try:
            alloc = rk.allocate_budget(items, goal, fixed_cost=table.rest)
        except ValueError as err:
            floor = table.rest + sum(
                float(np.min(it.costs, initial=it.original_cost)) for it in items
            )
            raise ValueError(
                f"convert: the latency budget {budget} on {table.target} cannot be met: even "
                f"with every candidate layer at its fastest offered rank the model takes "
                f"{floor * 1e3:.3f} ms "
                f"of {table.original_total * 1e3:.3f} ms. Raise the budget, or offer more "
                "layers (skip_first=False, method='auto')."
            ) from err
        if table.predictor is None:
            break
        new = False
        for _path, layer, shapes, _orig, _opts, cands in table.rows:
            i = alloc[id(layer)]
            if i is not None and (id(layer), i) not in table.measured:
                table.measured[(id(layer), i)] = table.seconds_fn(
                    table.timer, {i: cands[i]}, shapes
                )[i]
                new = True
        plan_s = table.rest + sum(
            orig if alloc[id(lay)] is None else table.measured[(id(lay), alloc[id(lay)])]
            for _, lay, _, orig, _, _ in table.rows
        )
        if plan_s <= goal or not new or rounds >= 3:
            break
    layers = []
    for path, layer, _shapes, orig, opts_list, _ in table.rows:
        i = alloc[id(layer)]
        if i is None:
            layers.append(PlannedLayer(path, None, None, 0.0, orig, orig, orig, len(opts_list)))
            continue
        m, r, err2, _, cost = opts_list[i]
        meas = table.measured.get((id(layer), i), cost if table.predictor is None else None)
        layers.append(PlannedLayer(path, m.name, r, err2, orig, cost, meas, len(opts_list)))
    plan = LatencyPlan(
        table.target, budget, timing, table.model_s, table.rest, layers, rounds, table.timed
    )
    plan.share = share
    plan.floor = table.floor_share()
    plan.seconds = time.perf_counter() - t0
    by_id = {
        id(t[1]): (t[4][alloc[id(t[1])]] if alloc[id(t[1])] is not None else None)
        for t in table.rows
    }
    return plan, by_id


def _plan_key(chosen) -> tuple:
    """A hashable key of an allocation: per layer id, (method name, rank) or None."""
    return tuple(sorted((i, None if v is None else (v[0].name, v[1])) for i, v in chosen.items()))


def _next_share(points, aim: float, floor: float) -> float:
    """The next planning share from the measured ``(share, ratio)`` points: linear
    interpolation between the two points around ``aim`` (``(1, 1)``, the original, is
    always one), clamped to ``[floor, 1]``; the fastest plan (``floor``) when the points
    say the ratio does not fall with the share."""
    pts = sorted({(1.0, 1.0), *points})
    below = [p for p in pts if p[1] <= aim]
    above = [p for p in pts if p[1] > aim]
    if below and above:
        (s0, r0), (s1, r1) = max(below, key=lambda p: p[1]), min(above, key=lambda p: p[1])
    else:  # extrapolate from the two points nearest the aim
        (s0, r0), (s1, r1) = sorted(pts, key=lambda p: abs(p[1] - aim))[:2]
    if abs(r1 - r0) < 1e-9:
        share = min(s0, s1) - 0.05
    elif (r1 - r0) * (s1 - s0) <= 0:
        # the measured ratio does not fall with the planned share: the per-layer timings
        # are off (e.g. cached on a busy machine); try the fastest plan
        share = floor
    else:
        share = s0 + (aim - r0) * (s1 - s0) / (r1 - r0)
    return float(min(1.0, max(floor * (1 + 1e-6), share)))


def _latency_share(budget, fn: str) -> float:
    """The ``x`` of ``budget={"latency": x}``, checked (``fn`` names the caller), as given."""
    x = budget["latency"]
    if isinstance(x, bool) or not isinstance(x, (int, float, np.number)) or not 0 < x <= 1:
        raise ValueError(
            f"{fn}: budget['latency']={x!r} must be a share of the original latency in "
            "(0, 1], e.g. {'latency': 0.7}."
        )
    return x


def _check_latency_model(model, fn: str) -> None:
    """A latency budget times the model at batch 1: it must be a built ``keras.Model``
    with one input of a fixed size."""
    if not isinstance(model, keras.Model) or not model.built or len(model.inputs or []) != 1:
        raise ValueError(f"{fn}: a latency budget needs a built keras.Model with one input.")
    if any(d is None for d in tuple(model.inputs[0].shape)[1:]):
        raise ValueError(
            f"{fn}: a latency budget needs a fixed input size; build the model with "
            "keras.Input((H, W, C))."
        )


def _channels_hint(model, x: float, target: Target) -> str:
    """For a refused latency budget: a pointer to channel pruning when the model has
    inverted-residual blocks (whose depthwise convs no rank shrinks), else ``""``."""
    if target.runtime != "litert" or not graph.is_graph_model(model):
        return ""
    try:
        blocks = prunable_blocks(model)
    except ValueError:
        return ""
    if not blocks:
        return ""
    shorthand = {v: k for k, v in TARGETS.items()}.get(target)
    where = repr(shorthand) if shorthand else repr(target)
    return (
        f" The model has {len(blocks)} inverted-residual blocks: thinning them reaches "
        "latencies that low-rank layers cannot (ke.prune_channels(model, budget="
        f"{{'latency': {x}}}, target={where}))."
    )


def _sharing_work(fn):
    """Run ``fn`` inside ``shared_work()``: each layer's spectrum (offered ranks) and Gram
    matrix or SVD serve every build of the call (bit-identical results)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with shared_work():
            return fn(*args, **kwargs)

    return wrapper


@_sharing_work
def convert(model: keras.Model, method="decef", budget=None, target=None, **kwargs):
    """Convert a model, to a latency budget on a target runtime or as ``compress.convert``.

    With ``budget={"latency": x}`` the ranks (and, with ``method="auto"``, the method) of
    each conv are planned so that the model's latency on ``target`` is at most ``x`` times
    the original's with the least error (see the module docstring for the latency model),
    then built with ``compress.convert``. Any other budget (or none) is passed to
    ``compress.convert`` unchanged, with every other argument.

    Args:
        model: A built ``keras.Model`` with a fixed input size (for a latency budget).
        method: A registered method name, a list of names, or ``"auto"`` (every available
            method whose ranks come from a spectrum, Tucker-2 at ``R1 = R2 = r``, and "keep
            the original", chosen per layer). With a latency budget only names (not
            mappings or functions) of such methods.
        budget: ``{"latency": x}`` with ``0 < x <= 1``, or a ``compress.convert`` budget.
        target: With a latency budget: a ``Target`` or a name in ``TARGETS``
            (default ``"litert-fp32"``); otherwise it must be None.
        **kwargs: The other arguments of ``compress.convert``; with a latency budget also
            ``timing`` (``"measure"``, default, or ``"predict"``), ``cache_path`` (the
            timing cache, default ``deploy.default_cache_path()``; the whole-model
            measurements are kept next to it in ``<name>.models.json``) and
            ``ranks_per_layer`` (default 4) and ``feedback_rounds`` (default 4: how many
            times the whole converted model may be exported and timed against the original,
            interleaved, to correct the plan until its measured latency ratio is at most
            ``x`` and within 0.05 of it; 0 trusts the per-layer timings alone). ``rank``,
            ``energy`` and ``round_to`` cannot be combined with a latency budget.

    Returns:
        ``(new_model, report)`` as ``compress.convert``; with a latency budget
        ``report.latency`` is the ``LatencyPlan`` (per layer the method, rank, original,
        predicted and measured seconds; the whole-model measurements in ``feedback``) and
        ``report.budget_met`` says whether the whole converted model measured at most ``x``
        of the original's latency (with ``feedback_rounds=0``: whether the plan meets the
        budget with the measured per-layer times).

    Raises:
        ValueError: As ``compress.convert``; when ``target`` is given without a latency
            budget or is unknown; when the latency budget is not in ``(0, 1]``, combined
            with ``rank``/``energy``/``round_to``, or for a model without a fixed input
            size; for the ``"train"`` target with ``timing="predict"`` or a Keras backend
            other than TensorFlow; when it cannot be met and ``strict`` is true.
    """
    is_latency = isinstance(budget, Mapping) and set(budget) == {"latency"}
    if not is_latency:
        if target is not None:
            raise ValueError(
                "convert: target= is used with budget={'latency': x} only; "
                f"got budget={budget!r}."
            )
        return compress_convert(model, method=method, budget=budget, **kwargs)
    t0 = time.perf_counter()
    x = _latency_share(budget, "convert")
    tgt = parse_target("litert-fp32" if target is None else target)
    if tgt.runtime == "train":
        if kwargs.get("timing", "measure") != "measure":
            raise ValueError(
                "convert: on target 'train' every candidate is timed (timing='measure'); "
                "timing='predict' uses a cost model fitted to LiteRT timings."
            )
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                "convert: target 'train' times TensorFlow training steps; run with "
                f"KERAS_BACKEND=tensorflow (the backend is {keras.backend.backend()!r})."
            )
    for bad in ("rank", "energy", "round_to"):
        if kwargs.get(bad) is not None:
            raise ValueError(
                f"convert: {bad}= cannot be combined with budget={{'latency': ...}}: the "
                "latency plan chooses the ranks (hardware-friendly sizes)."
            )
    timing = kwargs.pop("timing", "measure")
    if timing not in TIMINGS:
        raise ValueError(f"convert: timing must be one of {TIMINGS}, got {timing!r}.")
    cache_path = kwargs.pop("cache_path", None)
    feedback_rounds = kwargs.pop("feedback_rounds", 4)
    if (
        isinstance(feedback_rounds, bool)
        or not isinstance(feedback_rounds, int)
        or not 0 <= feedback_rounds <= 10
    ):
        raise ValueError(
            f"convert: feedback_rounds must be an int in 0..10, got {feedback_rounds!r}."
        )
    ranks_per_layer = kwargs.pop("ranks_per_layer", 4)
    if isinstance(ranks_per_layer, bool) or not isinstance(ranks_per_layer, int):
        raise ValueError(f"convert: ranks_per_layer must be an int, got {ranks_per_layer!r}.")
    if not 1 <= ranks_per_layer <= 6:
        raise ValueError(f"convert: ranks_per_layer must be in 1..6, got {ranks_per_layer}.")
    if isinstance(method, str):
        names = (
            [n for n in available_methods() if _budgetable(get_method(n))]
            if method == "auto"
            else [method]
        )
    elif isinstance(method, (list, tuple)) and all(isinstance(n, str) for n in method):
        names = list(method)
    else:
        raise ValueError(
            "convert: with a latency budget, method must be a name, a list of names or "
            f"'auto', got {method!r}."
        )
    methods = [get_method(n) for n in names]
    for m in methods:
        if not _budgetable(m):
            usable = ", ".join(repr(n) for n in available_methods() if _budgetable(get_method(n)))
            raise ValueError(
                f"convert: method '{m.name}' chooses its own ranks and has no spectrum to "
                f"spread a latency budget with; latency budgets take {usable} (or 'auto')."
            )
    _check_latency_model(model, "convert")
    include, exclude = kwargs.get("include"), kwargs.get("exclude")
    skip_first = kwargs.get("skip_first", True)
    options = kwargs.get("options")
    strict = kwargs.get("strict", True)

    spectra_stats: dict[int, dict] = {}
    data = kwargs.get("calibration_data")
    if data is not None:
        batches = cal.calibration_batches(
            data, model, kwargs.get("calibration_steps"), kwargs.get("calibration_batch_size", 16)
        )
        wanted = {}
        for _, layer in graph.walk(model):
            if type(layer) is not keras.layers.Conv2D:
                continue
            kinds = set()
            for m in methods:
                kinds |= set(m.needed_statistics(m.merged_options(options)))
            if kinds:
                wanted[id(layer)] = (layer, tuple(sorted(kinds)))
        fit = batches[: max(1, len(batches) - max(1, len(batches) // 8))]
        if wanted:
            collected = cal.collect_statistics(model, wanted, fit)
            spectra_stats = {k: v.moments() for k, v in collected.items()}

    def statistics_for(layer, m, opts):
        stats = spectra_stats.get(id(layer))
        return stats if stats is not None and m.needed_statistics(opts) else None

    if not _candidate_sources(model, methods, include, exclude, skip_first):
        raise ValueError(
            f"convert: no layer of model '{model.name}' can be replaced by "
            f"{', '.join(m.name for m in methods)} (plain Conv2D layers, groups=1, "
            "channels_last; spatial-only methods such as 'decef' skip 1x1 convs; the first "
            "conv is kept with skip_first=True). Use method='auto' or another method, or "
            "skip_first=False."
        )
    progress = kwargs.get("progress", "auto")
    show_progress = progress is True or (progress == "auto" and sys.stderr.isatty())
    interpreters: dict = {}

    def original_it():
        """The original's interpreter, made when it is first timed."""
        if "original" not in interpreters:
            interpreters["original"] = _interpreter(model, tgt)
        return interpreters["original"]

    architecture = _architecture_key(
        model,
        tgt,
        names,
        {
            "options": None if options is None else dict(options),
            "ranks_per_layer": ranks_per_layer,
            "include": include,
            "exclude": exclude,
            "skip_first": skip_first,
            "implementation": kwargs.get("implementation", "auto"),
            # train: both training paths timed, the faster one built (not the cost model's)
            **({"training_paths": "measured"} if tgt.runtime == "train" else {}),
        },
    )
    table = _time_table(
        model,
        methods,
        tgt,
        timing,
        include,
        exclude,
        skip_first,
        options,
        statistics_for,
        cache_path,
        ranks_per_layer,
        original_it,
        show_progress,
        architecture,
        implementation=kwargs.get("implementation", "auto"),
    )
    paths = {id(t[1]): t[0] for t in table.rows}

    def stored_plan(chosen) -> list:
        """The plan as the records key it: sorted ``[path, method, rank]``."""
        return sorted([paths[i], v[0].name, int(v[1])] for i, v in chosen.items() if v is not None)

    def record(chosen, o, c, first: int, confirmed: bool) -> None:
        """Keep a plan's per-round seconds (the first ``first`` rounds: its measurement;
        all of them: its confirmation when ``confirmed``)."""
        feats = {"first_rounds": first, "confirmed": float(confirmed)}
        feats.update({f"o|{i}": v for i, v in enumerate(o)})
        feats.update({f"c|{i}": v for i, v in enumerate(c)})
        table.records.put("plan", float(np.median(c)), feats, stored_plan(chosen))

    def recalled(chosen):
        """A plan's per-round seconds kept by an earlier call: ``(o, c, first rounds,
        confirmed)``, or None."""
        entry = table.records.get("plan", stored_plan(chosen))
        if entry is None:
            return None
        f = entry["features"]
        n = sum(1 for k in f if k.startswith("o|"))
        try:
            o = [f[f"o|{i}"] for i in range(n)]
            c = [f[f"c|{i}"] for i in range(n)]
            first, confirmed = int(f["first_rounds"]), bool(f["confirmed"])
        except KeyError:  # not an entry this module wrote: measure again
            return None
        return (o, c, first, confirmed) if 0 < first <= n else None

    planned = ("include", "exclude", "skip_first", "rank", "energy", "round_to")
    kwargs = {k: v for k, v in kwargs.items() if k not in planned}  # the plan decides these
    kwargs.pop("require_saving", None)

    def build(chosen, **extra):
        by_id = {k: v for k, v in chosen.items() if v is not None}
        new_model, report = compress_convert(
            model,
            method=lambda layer: by_id[id(layer)][0] if id(layer) in by_id else None,
            rank=lambda layer: by_id[id(layer)][1] if id(layer) in by_id else None,
            skip_first=False,
            require_saving=False,
            **extra,
        )
        if tgt.runtime == "train" and by_id:
            # each layer trains the way it measured faster here (its table entry is the
            # faster of its two training paths); the model was just built: set in place
            new_model, _ = tune_implementations(
                new_model, batch_size=tgt.batch, cache_path=table.timer.cache_path, copy=False
            )
        return new_model, report

    # Plan at the budget; then measure the whole converted model against the original
    # (interleaved) and re-plan at a corrected share until the measurement is at most the
    # budget and within 0.05 of it (``feedback_rounds`` measurements at most). The layers'
    # isolated timings do not add up to the model's: the measurement is what counts.
    aim = max(float(x) - 0.02, float(x) * 0.97)
    floor = table.floor_share()
    points, tried, history = [], {}, []
    interps: dict = {}
    samples: dict = {}
    kept: dict = {}  # plan key -> (o, c) of an earlier call's confirmation

    def interpreter_of(chosen):
        """The target's interpreter (or training step) of the plan's converted model."""
        timing_model, _ = build(
            chosen,
            options=options,
            implementation=kwargs.get("implementation", "auto"),
            progress=False,
            strict=False,
        )
        prepared = (
            timing_model  # trains as built: each layer by its faster measured path
            if tgt.runtime == "train"
            else prepare_for_inference(
                timing_model,
                num_threads=tgt.threads,
                quantize=tgt.quantize,
                cache_path=table.timer.cache_path,
                check=False,
            )
        )
        return _interpreter(prepared, tgt)

    try:
        plan, chosen = _allocate(table, float(x), float(x), timing)
        refused = None
    except ValueError as err:
        # The per-layer sum says no; the whole model may still say yes (the sums were
        # off by up to 0.2 in both directions): measure the fastest plan unless the
        # budget is far out of reach.
        if feedback_rounds == 0 or x < 0.6 * floor:
            hint = _channels_hint(model, x, tgt)
            if hint:
                raise ValueError(f"{err}{hint}") from err
            raise
        refused = err
        plan, chosen = _allocate(table, floor * (1 + 1e-6), float(x), timing)
    for k in range(feedback_rounds):
        key = _plan_key(chosen)
        if all(v is None for v in chosen.values()):  # the original itself: nothing to time
            tried[key] = dict.fromkeys(("ratio", "p10", "p90"), 1.0)
            tried[key].update(original_s=table.model_s, candidate_s=table.model_s, rounds=0)
        earlier = recalled(chosen) if key not in tried else None
        if earlier is not None:  # measured by an earlier call: its rounds, replayed
            o, c, first, confirmed = earlier
            samples[key] = (o[:first], c[:first])
            tried[key] = _ratio_stats(*samples[key])
            kept[key] = (o, c) if confirmed else None
            table.reused += 1
        if key not in tried:
            interps[key] = interpreter_of(chosen)
            samples[key] = _paired_samples(original_it(), interps[key], 15, 0.25)
            tried[key] = _ratio_stats(*samples[key])
            planned = plan.ratio
            if not 0.5 * planned <= tried[key]["ratio"] <= 2.0 * planned:
                # far from the plan: likely a burst of load on one side; time it again
                samples[key] = _paired_samples(original_it(), interps[key], 15, 0.25, *samples[key])
                tried[key] = _ratio_stats(*samples[key])
            table.model_timings += 1
            record(chosen, *samples[key], len(samples[key][0]), False)
        got = {"share": plan.share, "planned_ratio": plan.ratio, **tried[key]}
        history.append((got, plan, chosen))
        if show_progress:
            sys.stderr.write(
                f"measured {k + 1}/{feedback_rounds}: the whole model at "
                f"{got['ratio']:.3f} of the original's latency (planned {plan.ratio:.3f}, "
                f"budget {x})\n"
            )
            sys.stderr.flush()
        points.append((plan.share, got["ratio"]))
        if x - 0.05 <= got["ratio"] <= x or k == feedback_rounds - 1:
            break
        nxt = _next_share(points, aim, floor)
        if abs(nxt - plan.share) < 1e-4:
            break
        plan, chosen = _allocate(table, nxt, float(x), timing)
    if refused is not None and min(h[0]["ratio"] for h in history) > x:
        raise ValueError(
            f"convert: the latency budget {x} on {tgt} cannot be met: the fastest offered "
            f"plan measured {min(h[0]['ratio'] for h in history):.3f} of the original's "
            "latency. Raise the budget, or offer more layers (skip_first=False, "
            "method='auto')." + _channels_hint(model, x, tgt)
        ) from refused
    if history:  # the measured plan closest to the budget from below (else the fastest)

        def confirm(h) -> dict:
            got, _, chosen = h
            key = _plan_key(chosen)
            if kept.get(key) is not None:  # confirmed by an earlier call
                return {**got, **_ratio_stats(*kept[key]), "confirmed": True}
            if key not in samples:  # the original: nothing to confirm
                return {**got, "confirmed": False}
            first = len(samples[key][0])  # as many rounds again
            if key not in interps:  # measured by an earlier call, not confirmed
                interps[key] = interpreter_of(chosen)
            samples[key] = _confirmed_samples(original_it(), interps[key], *samples[key])
            table.model_timings += 1
            record(chosen, *samples[key], first, True)
            return {**got, **_ratio_stats(*samples[key]), "confirmed": True}

        distinct: dict = {}
        for h in history:  # a plan re-allocated at a later share: its first measurement
            distinct.setdefault(_plan_key(h[2]), h)
        (_, plan, chosen), got = _confirm_closest(
            [(h[0]["ratio"], h) for h in distinct.values()], float(x), confirm
        )
        plan.feedback = [h[0] for h in history]
        plan.measured = got
    plan.model_timings, plan.reused = table.model_timings, table.reused
    new_model, report = build(chosen, **kwargs)
    names = {p.name for p in plan.layers if p.method is None}
    for row in report.layers:
        if row.name in names:
            row.reason = "the latency plan keeps it (no candidate pays on the target)"
    report.method = "auto" if method == "auto" else report.method
    report.selection = f"budget={{'latency': {x}}} on {tgt}, timing={timing}"
    report.latency = plan
    report.budget_met = plan.met
    report.seconds = time.perf_counter() - t0
    if not plan.met:
        msg = (
            f"convert: the latency budget {x} on {tgt} was missed: the "
            + (
                f"whole converted model measured {plan.measured['ratio']:.3f} of the "
                "original's latency"
                if plan.measured
                else f"plan's latency ratio is {plan.ratio:.3f}"
            )
            + "."
        )
        if strict:
            raise ValueError(msg + " Raise the budget or pass strict=False.")
        import warnings

        warnings.warn(msg, UserWarning, stacklevel=2)
    return new_model, report


def prune_channels(
    model: keras.Model,
    budget=None,
    keep=None,
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
    *,
    target=None,
    feedback_rounds: int = 5,
    progress="auto",
):
    """Prune inverted-residual blocks' hidden channels, to a latency budget on a target or
    as ``compress.prune_channels``.

    With ``budget={"latency": x}`` the pruned model's latency on ``target`` (LiteRT, batch
    1) is measured, not modelled: the model is pruned with ``compress.prune_channels`` at a
    MACs budget (a share ``s`` of the model's MACs, first ``s = x``: a narrower block's
    latency falls about with its MACs, unlike a low-rank factorization's), converted for
    the target, and timed interleaved against the original (the median of per-round
    ratios, as ``convert`` does). The share is then corrected by interpolating the measured
    ``(s, ratio)`` points (the original, ``(1, 1)``, is one) until the measured ratio is at
    most ``x`` and within 0.05 of it, or ``feedback_rounds`` shares were tried. The
    measured model closest to ``x`` from below is confirmed with as many interleaved rounds
    again (and as many once more when the two sets' medians disagree by more than 0.05); if
    its confirmed ratio is above ``x``, the next one below is confirmed instead. A share
    that keeps every channel is the original (ratio 1, not timed; with ``x = 1`` a copy of
    the original is returned and nothing is converted for LiteRT), and a pruned network
    whose per-block channel counts were measured already is not timed again. The arguments
    are checked, the MAC floor counted (not built) and the channels scored once
    (``compress.channels.ChannelPruner``; with ``calibration_data``, one pass over the data
    for the statistics); each share then only allocates and builds. Channel pruning removes
    whole channels of the expand, depthwise and project convs (no extra ops), so on
    MobileNet-style networks it reaches latencies the low-rank methods cannot (their extra
    1x1 convs and the depthwise convs do not shrink with the rank).

    Any other budget, or ``keep``, is passed to ``compress.prune_channels`` unchanged.

    Args:
        model: A built Functional or Sequential ``keras.Model`` with inverted-residual
            blocks (``compress.prunable_blocks``) and, for a latency budget, one input of a
            fixed size.
        budget: ``{"latency": x}`` with ``0 < x <= 1``, or a ``compress.prune_channels``
            budget (``{"macs": x}`` or ``{"params": x}``).
        keep: As ``compress.prune_channels`` (not with a latency budget).
        include: As ``compress.prune_channels``.
        exclude: As ``compress.prune_channels``.
        round_to: As ``compress.prune_channels``.
        allocation: As ``compress.prune_channels``.
        calibration_data: As ``compress.prune_channels`` (read once, then reused).
        calibration_steps: As ``compress.prune_channels``.
        calibration_batch_size: As ``compress.prune_channels``.
        refit: As ``compress.prune_channels``.
        ridge: As ``compress.prune_channels``.
        strict: Raise when the budget is missed (``False``: warn and return the model).
        target: With a latency budget: a LiteRT ``Target`` or one of ``"litert-fp32"``
            (default), ``"litert-fp16"``, ``"litert-int8"``; otherwise it must be None.
        feedback_rounds: With a latency budget: how many shares may be tried, 1..10.
        progress: With a latency budget: a line per measurement on stderr (True, False or
            ``"auto"``: on a terminal).

    Returns:
        ``(new_model, report)`` as ``compress.prune_channels``; with a latency budget
        ``report.latency`` holds the measurements and ``report.budget_met`` says whether
        the returned model's confirmed ratio is at most ``x``.

    Raises:
        ValueError: As ``compress.prune_channels``; when ``target`` is given without a
            latency budget or is not a LiteRT target; when ``x`` is not in ``(0, 1]``, is
            combined with ``keep``, or the model has no fixed input size; when the budget
            is missed and ``strict`` is true (the message gives the measurement).
    """
    fn = "prune_channels"
    common = dict(
        include=include,
        exclude=exclude,
        round_to=round_to,
        allocation=allocation,
        refit=refit,
        ridge=ridge,
    )
    data = dict(
        calibration_data=calibration_data,
        calibration_steps=calibration_steps,
        calibration_batch_size=calibration_batch_size,
    )
    if not (isinstance(budget, Mapping) and set(budget) == {"latency"}):
        if target is not None:
            raise ValueError(
                f"{fn}: target= is used with budget={{'latency': x}} only; got budget={budget!r}."
            )
        return compress_prune_channels(
            model, budget=budget, keep=keep, strict=strict, **common, **data
        )
    t0 = time.perf_counter()
    x = _latency_share(budget, fn)
    tgt = parse_target("litert-fp32" if target is None else target)
    if tgt.runtime != "litert":
        raise ValueError(
            f"{fn}: a latency budget is measured in LiteRT; target must be 'litert-fp32', "
            f"'litert-fp16', 'litert-int8' or a Target('litert', ...), got {target!r}."
        )
    if keep is not None:
        raise ValueError(
            f"{fn}: keep= cannot be combined with budget={{'latency': ...}}: the measured "
            "latency decides how many channels each block keeps."
        )
    if (
        isinstance(feedback_rounds, bool)
        or not isinstance(feedback_rounds, int)
        or not 1 <= feedback_rounds <= 10
    ):
        raise ValueError(f"{fn}: feedback_rounds must be an int in 1..10, got {feedback_rounds!r}.")
    if progress not in (True, False, "auto"):
        raise ValueError(f"{fn}: progress must be True, False or 'auto', got {progress!r}.")
    show = progress is True or (progress == "auto" and sys.stderr.isatty())
    _check_latency_model(model, fn)
    # Every argument checked, the blocks found and the data read once, before anything is
    # converted or timed; the channel scores are computed on the first pruning and reused.
    pruner = ChannelPruner(model, **common, **data)
    floor = pruner.floor("macs")  # every block at its least allowed count, counted
    original = None  # converted when a pruned model is first timed (not for x = 1)
    aim = max(x - 0.02, x * 0.97)
    share = min(1.0, max(floor * (1 + 1e-6), x))
    points, history, seen = [], [], {}
    timings = 0
    for k in range(feedback_rounds):
        pruned, report = pruner.prune(budget={"macs": share}, strict=False)
        key = tuple(b.kept for b in report.blocks)
        if key not in seen:
            if not report.pruned:  # every channel kept: the original itself
                seen[key] = (None, None, None)
            else:
                if original is None:
                    original = _interpreter(model, tgt)
                interp = _interpreter(pruned, tgt)
                o, c = _paired_samples(original, interp, 15, 0.25)
                timings += 1
                seen[key] = (interp, o, c)
        _, o, c = seen[key]
        stats = (
            _ratio_stats(o, c)
            if o is not None
            else {"ratio": 1.0, "p10": 1.0, "p90": 1.0, "rounds": 0}
        )
        got = {"share": share, "macs_ratio": report.macs_ratio, **stats}
        history.append((got, pruned, report, key))
        points.append((share, got["ratio"]))
        if show:
            sys.stderr.write(
                f"{fn}: measured {k + 1}/{feedback_rounds}: {got['ratio']:.3f} of the "
                f"original's latency at {got['macs_ratio']:.3f} of its MACs (budget {x})\n"
            )
            sys.stderr.flush()
        if x - 0.05 <= got["ratio"] <= x:
            break
        if share >= 1.0 and got["ratio"] <= x:  # the original meets the budget (x = 1)
            break
        nxt = _next_share([p for p in points if p[0] < 1.0], aim, floor)
        if abs(nxt - share) < 1e-4:
            break
        share = nxt

    def confirm(h) -> dict:
        nonlocal timings
        got, key = h[0], h[3]
        interp, o, c = seen[key]
        if interp is None:  # the original: nothing to confirm
            return {**got, "confirmed": False}
        o2, c2 = _confirmed_samples(original, interp, o, c)
        timings += 1
        return {**got, **_ratio_stats(o2, c2), "confirmed": True}

    distinct: dict = {}
    for h in history:
        distinct.setdefault(h[3], h)
    (got, pruned, report, key), measured = _confirm_closest(
        [(h[0]["ratio"], h) for h in distinct.values()], x, confirm
    )
    report.latency = {
        "target": str(tgt),
        "budget": x,
        "floor_macs_ratio": floor,
        "feedback": [h[0] for h in history],
        "measured": measured,
        "model_timings": timings,
    }
    report.budget_met = bool(measured["ratio"] <= x)
    report.selection = (
        f"budget={{'latency': {x}}} on {tgt} (at {report.macs_ratio:.3f} of the MACs), "
        f"{allocation} allocation, multiples of {round_to}, "
        + ("data-aware" if calibration_data is not None else "data-free")
    )
    report.seconds = time.perf_counter() - t0
    if not report.budget_met:
        msg = (
            f"{fn}: the latency budget {x} on {tgt} was missed: the pruned model measured "
            f"{measured['ratio']:.3f} of the original's latency (the fastest reachable keeps "
            f"{floor:.3f} of the MACs)."
        )
        if strict:
            raise ValueError(msg + " Raise the budget or pass strict=False.")
        import warnings

        warnings.warn(msg, UserWarning, stacklevel=2)
    return pruned, report
