"""Model surgery: replace the ``Conv2D`` (and ``Dense``) layers of a whole model.

``convert(model, method=..., rank=/energy=/budget=...)`` clones a Functional or Sequential
model with ``keras.models.clone_model(recursive=True)`` (nested models included, shared layers
stay shared), swaps the chosen layers for replacements initialized by decomposing their trained
weights (``Method.build`` = ``cls.from_conv2d``), copies every other layer's weights exactly,
and returns the new model with a ``ConversionReport``. The user's model is not modified.

Methods come from ``registry`` only: this module has no per-method branches.
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np

from . import ranks as rk
from ._base import IMPLEMENTATIONS
from ._table import markdown_table, text_table
from .cost import Cost, _call_input_shapes, layer_cost, model_cost
from .registry import Method, available_methods, get_method

__all__ = ["ConversionReport", "LayerReport", "convert", "register_cli"]

RANK_RULES = ("full", "effective", "entropy", "vbmf")
_LISTED_TYPES = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Conv2DTranspose,
)
_NOMINAL_HW = 56  # spatial size used to compare costs when a model's input size is unknown


# ---- the report --------------------------------------------------------------------------


@dataclass
class LayerReport:
    """One conv/dense layer: what was done to it and what it costs before and after."""

    name: str
    type: str
    method: str | None = None
    rank: Any = None
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    relative_error: float | None = None
    replaced: bool = False
    reason: str = ""
    implementation: str | None = None


@dataclass
class ConversionReport:
    """Per-layer results and model totals of a ``convert`` call.

    ``total_before``/``total_after`` are ``model_cost`` totals of the whole models (MACs
    ``None`` when the input size is unknown); ``relative_error`` is the kernel's relative
    Frobenius error ``||W - W_r|| / ||W||`` of each replaced layer.
    """

    method: str
    selection: str
    layers: list[LayerReport] = field(default_factory=list)
    total_before: Cost = field(default_factory=Cost)
    total_after: Cost = field(default_factory=Cost)
    macs_known: bool = True
    seconds: float = 0.0

    @property
    def replaced(self) -> list[LayerReport]:
        return [r for r in self.layers if r.replaced]

    @property
    def skipped(self) -> list[LayerReport]:
        return [r for r in self.layers if not r.replaced]

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
        return {
            "method": self.method,
            "selection": self.selection,
            "layers": [asdict(r) for r in self.layers],
            "total_before": self.total_before.to_dict(),
            "total_after": self.total_after.to_dict(),
            "macs_known": self.macs_known,
            "macs_ratio": self.macs_ratio,
            "params_ratio": self.params_ratio,
            "replaced": len(self.replaced),
            "skipped": len(self.skipped),
            "seconds": self.seconds,
        }

    _COLUMNS = (
        "layer",
        "type",
        "method",
        "rank",
        "params before",
        "params after",
        "MACs before",
        "MACs after",
        "rel. error",
        "note",
    )

    def _rows(self) -> list[dict]:
        rows = []
        for r in self.layers:
            rows.append(
                {
                    "layer": r.name,
                    "type": r.type,
                    "method": r.method or "",
                    "rank": "" if r.rank is None else str(r.rank),
                    "params before": r.params_before,
                    "params after": r.params_after,
                    "MACs before": r.macs_before,
                    "MACs after": r.macs_after,
                    "rel. error": r.relative_error,
                    "note": (r.implementation or "") if r.replaced else f"kept: {r.reason}",
                }
            )
        return rows

    def _summary(self) -> list[str]:
        b, a = self.total_before, self.total_after
        lines = [
            f"method: {self.method}; ranks: {self.selection}; replaced {len(self.replaced)} of "
            f"{len(self.layers)} conv/dense layers in {self.seconds:.2f} s",
            f"parameters: {b.total_params:,} -> {a.total_params:,} (x{self.params_ratio:.3f})"
            if self.params_ratio is not None
            else f"parameters: {b.total_params:,} -> {a.total_params:,}",
        ]
        if self.macs_ratio is not None:
            lines.append(f"MACs: {b.macs:,} -> {a.macs:,} (x{self.macs_ratio:.3f})")
        else:
            lines.append("MACs: unknown (the model's input size is not fixed)")
        return lines

    def __str__(self) -> str:
        fmt = {"rel. error": ".4f"}
        return "\n".join([text_table(self._rows(), self._COLUMNS, fmt), "", *self._summary()])

    def to_markdown(self) -> str:
        fmt = {"rel. error": ".4f"}
        summary = "\n".join(f"- {line}" for line in self._summary())
        return f"{summary}\n\n{markdown_table(self._rows(), self._COLUMNS, fmt)}\n"


# ---- helpers -----------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.enabled, self.n = total, enabled and total > 0, 0
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()

    def step(self, label: str) -> None:
        self.n += 1
        if not self.enabled:
            return
        width = 30
        done = int(width * self.n / self.total)
        elapsed = time.perf_counter() - self.start
        self.stream.write(
            f"\rconverting [{'#' * done}{'.' * (width - done)}] {self.n}/{self.total} "
            f"{elapsed:5.1f}s {label[:40]:<40}"
        )
        if self.n == self.total:
            self.stream.write("\n")
        self.stream.flush()


def _is_graph_model(model) -> bool:
    from keras.src.models.functional import Functional

    return isinstance(model, (keras.Sequential, Functional))


def _walk(model, prefix: str = "", seen=None):
    """``(path, layer)`` of every non-model layer, nested Functional/Sequential included."""
    seen = set() if seen is None else seen
    for layer in model.layers:
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        path = prefix + layer.name
        if isinstance(layer, keras.Model) and _is_graph_model(layer):
            yield from _walk(layer, path + "/", seen)
        else:
            yield path, layer


def _matches(spec, path: str, layer) -> bool:
    """``spec``: a name glob (matched against the path and the name), a layer class, a
    predicate ``fn(layer) -> bool``, or a list of these."""
    if spec is None:
        return False
    if isinstance(spec, (list, tuple, set, frozenset)):
        return any(_matches(s, path, layer) for s in spec)
    if isinstance(spec, str):
        return fnmatch.fnmatchcase(path, spec) or fnmatch.fnmatchcase(layer.name, spec)
    if isinstance(spec, type):
        return isinstance(layer, spec)
    if callable(spec):
        return bool(spec(layer))
    raise ValueError(
        f"include/exclude entries must be name patterns, layer classes or predicates, got {spec!r}."
    )


def _per_layer(value, path: str, layer, what: str):
    """Resolve a per-layer argument: a mapping ``{pattern: value}`` (first match; no match ->
    ``KeyError``), a function of the layer, or one value for all."""
    if isinstance(value, Mapping):
        for pattern, v in value.items():
            if _matches(pattern, path, layer):
                return v
        raise KeyError(f"no entry of the {what} mapping matches")
    if callable(value) and not isinstance(value, (Method, type, str)):
        return value(layer)
    return value


def _shapes(layer, nominal: bool = False) -> list[tuple]:
    shapes = _call_input_shapes(layer)
    if nominal:
        shapes = [
            tuple(_NOMINAL_HW if (d is None and 0 < i < len(s) - 1) else d for i, d in enumerate(s))
            for s in shapes
        ]
    return shapes


def _known(shapes) -> bool:
    return bool(shapes) and all(d is not None for s in shapes for d in s[1:])


def _summed_cost(costfn, shapes) -> Cost:
    total = Cost()
    for i, shape in enumerate(shapes):
        c = costfn(shape)
        total = Cost(c.params, c.fixed_params, total.macs + c.macs) if i else c
    return total


def _check_rank_arg(rank) -> None:
    if rank is None or isinstance(rank, (Mapping,)) or callable(rank):
        return
    if isinstance(rank, str):
        if rank not in RANK_RULES:
            raise ValueError(
                f"convert: rank={rank!r} is not understood; pass a positive int, one of "
                f"{RANK_RULES}, a {{pattern: rank}} mapping, or a function of the layer."
            )
        return
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer, tuple, list)):
        raise ValueError(
            f"convert: rank must be an int, a rule name, a mapping or a function, got {rank!r}."
        )
    if isinstance(rank, (int, np.integer)) and rank < 1:
        raise ValueError(f"convert: rank={rank} must be >= 1.")


# ---- the converter -----------------------------------------------------------------------


def convert(
    model: keras.Model,
    method: str | Method | Mapping | Callable = "decef",
    rank: int | str | Mapping | Callable | None = None,
    energy: float | None = None,
    budget: Mapping[str, float] | None = None,
    include=None,
    exclude=None,
    round_to: int | None = None,
    skip_first: bool = True,
    require_saving: bool = True,
    implementation: str = "auto",
    options: Mapping | None = None,
    progress: bool | str = "auto",
) -> tuple[keras.Model, ConversionReport]:
    """Replace the conv (and dense) layers of ``model``; return ``(new_model, report)``.

    - ``method``: a registered name (``registry.available_methods()``), a ``Method``, a
      mapping ``{layer pattern: method or None}`` (first match; unmatched layers are kept),
      or ``fn(layer) -> method or None``.
    - Ranks (at most one of): ``rank`` (an int, clipped to each layer's maximum; ``"full"``;
      ``"effective"``/``"entropy"`` the Roy-Vetterli rank; ``"vbmf"``; a mapping
      ``{pattern: rank}``; or ``fn(layer) -> rank or None``); ``energy`` (smallest rank
      keeping that share of each kernel's squared norm); ``budget`` (``{"macs": x}`` or
      ``{"params": x}``, ``x <= 1`` a share of the model's total, else a count: ranks are
      allocated across layers to meet it with the least total squared relative error). With
      none of them, the full (exact) rank.
    - ``round_to``: ranks rounded up to multiples of it (8, 16, 32: faster kernels).
    - ``include``/``exclude``: name globs (``"conv4_*"``, matched against the layer name
      and its ``outer/inner`` path), layer classes, predicates, or lists of these.
    - Defaults leave as they are: the first conv (``skip_first``), 1x1 convs for spatial-only
      methods, depthwise/separable/grouped/transposed convs, and (``require_saving``) layers
      whose replacement would not cost fewer MACs (params for a params budget).
    - ``options``: extra constructor options for the method's layer (e.g. ``{"batch_norm":
      True}``); ``implementation`` goes to every replacement.
    - ``progress``: a progress bar on stderr (``"auto"``: on a terminal, 10+ layers).
    """
    t0 = time.perf_counter()
    if not isinstance(model, keras.Model):
        raise ValueError(f"convert needs a keras.Model, got {type(model).__name__}.")
    if not _is_graph_model(model):
        raise ValueError(
            f"convert: model '{model.name}' is a subclassed keras.Model "
            f"({type(model).__name__}), which keras.models.clone_model cannot rebuild layer by "
            "layer. Build it with the functional API or as a keras.Sequential (custom layers "
            "inside are fine), or replace its Conv2D layers yourself with "
            "DeCEFConv2D.from_conv2d(conv, ...) and friends."
        )
    if not model.built or (model.layers and not model.weights):
        raise ValueError(
            f"convert: model '{model.name}' is not built, so it has no weights to decompose. "
            "Give it an input shape (keras.Input) or call it on data first."
        )
    given = [
        n for n, v in (("rank", rank), ("energy", energy), ("budget", budget)) if v is not None
    ]
    if len(given) > 1:
        raise ValueError(f"convert: pass at most one of rank, energy and budget (got {given}).")
    _check_rank_arg(rank)
    if energy is not None:
        rk.energy_rank([1.0], energy)  # validates
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"convert: implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}."
        )
    rk.round_rank(1, round_to, 1)  # validates round_to
    metric, value = rk.parse_budget(budget) if budget is not None else (None, None)
    if isinstance(method, (str, Method)):
        get_method(method)  # fail early on an unknown or unavailable method

    selection = _describe_selection(rank, energy, budget, round_to)
    method_label = (
        method
        if isinstance(method, str)
        else method.name
        if isinstance(method, Method)
        else "per layer"
    )

    try:
        before = model_cost(model).total
        macs_known = True
    except ValueError:
        before = Cost(*_params(model), 0)
        macs_known = False

    # -- 1. what each listed layer becomes ----------------------------------------------
    layers = list(_walk(model))
    first_conv = next((id(lay) for _, lay in layers if isinstance(lay, _LISTED_TYPES)), None)
    rows: dict[int, LayerReport] = {}
    plans = []  # (path, layer, Method, opts, shapes, row)
    for path, layer in layers:
        try:
            m = _per_layer(method, path, layer, "method")
        except KeyError:
            m = None
        m = get_method(m) if m is not None else None
        source_types = _LISTED_TYPES + (m.source_types() if m else ())
        if not isinstance(layer, source_types):
            continue
        shapes = _shapes(layer)
        before_cost = (
            _summed_cost(
                lambda s, lay=layer: layer_cost(lay, s),
                shapes if _known(shapes) else _shapes(layer, nominal=True),
            )
            if shapes
            else Cost(*_params(layer), 0)
        )
        row = LayerReport(
            name=path,
            type=type(layer).__name__,
            method=m.name if m else None,
            params_before=before_cost.total_params,
            params_after=before_cost.total_params,
            macs_before=before_cost.macs if _known(shapes) else None,
            macs_after=before_cost.macs if _known(shapes) else None,
        )
        rows[id(layer)] = row
        reason = _skip_reason(layer, path, m, include, exclude, skip_first, first_conv)
        if reason:
            row.reason = reason
            continue
        plans.append((path, layer, m, m.merged_options(options), shapes, row))

    # -- 2. ranks -------------------------------------------------------------------------
    prog = _Progress(
        len(plans),
        progress is True or (progress == "auto" and len(plans) >= 10 and sys.stderr.isatty()),
    )
    spectra: dict[int, np.ndarray] = {}

    def spectrum(layer, m, opts):
        if id(layer) not in spectra:
            spectra[id(layer)] = m.spectrum(layer, opts)
        return spectra[id(layer)]

    chosen: dict[int, Any] = {}  # id -> rank, or ("energy", e) for layer-chosen ranks
    if budget is not None:
        if metric == "macs" and not macs_known:
            raise ValueError(
                "convert: a MACs budget needs a model with a fixed input size; build it with "
                "keras.Input((H, W, C)) or use budget={'params': ...}."
            )
        idx = 0 if metric == "params" else 1
        total = before.total_params if metric == "params" else before.macs
        target = value * total if value <= 1 else value
        items, kept_cost = [], 0.0
        for _path, layer, m, opts, shapes, row in plans:
            s = spectrum(layer, m, opts)
            cand = rk.candidate_ranks(len(s), round_to)
            err2 = rk.relative_errors(s)[cand - 1] ** 2
            costs = m.rank_costs(layer, cand, shapes, opts)[:, idx]
            orig = row.params_before if metric == "params" else row.macs_before
            kept_cost += orig
            items.append(rk.BudgetItem(id(layer), cand, err2, costs, float(orig)))
        alloc = rk.allocate_budget(items, target, fixed_cost=total - kept_cost)
        for plan in plans:
            layer, row = plan[1], plan[5]
            if alloc[id(layer)] is None:
                row.reason = "the budget allocation keeps it"
            else:
                chosen[id(layer)] = alloc[id(layer)]
    else:
        for path, layer, m, opts, _, row in plans:
            try:
                r = _per_layer(rank, path, layer, "rank") if rank is not None else None
            except KeyError:
                row.reason = "no entry of the rank mapping matches"
                continue
            if rank is not None and r is None:
                row.reason = "the rank function returned None"
                continue
            try:
                chosen[id(layer)] = _choose_rank(layer, m, opts, r, energy, round_to, spectrum)
            except ValueError as err:
                row.reason = f"cannot choose a rank: {err}"
                continue

    # -- 3. build the replacements --------------------------------------------------------
    replacements = {}
    for path, layer, m, opts, shapes, row in plans:
        if id(layer) not in chosen:
            prog.step(path)
            continue
        r = chosen[id(layer)]
        check_shapes = shapes if _known(shapes) else _shapes(layer, nominal=True)
        key = "total_params" if metric == "params" else "macs"
        orig_cost = (
            row.params_before
            if metric == "params"
            else _summed_cost(lambda s, lay=layer: layer_cost(lay, s), check_shapes).macs
        )
        if require_saving and m.rank_selection == "spectrum" and check_shapes:
            c = getattr(m.cost(layer, r, check_shapes, opts), key)
            if c >= orig_cost:
                row.reason = _costlier(m, r, c, orig_cost, metric)
                prog.step(path)
                continue
        try:
            if isinstance(r, tuple) and r and r[0] == "energy":
                new = m.build(layer, energy=r[1], implementation=implementation, options=opts)
            else:
                new = m.build(layer, rank=r, implementation=implementation, options=opts)
        except ValueError as err:
            row.reason = f"cannot convert: {err}"
            prog.step(path)
            continue
        after = _summed_cost(new.cost, check_shapes) if check_shapes else Cost(*_params(new), 0)
        if require_saving and getattr(after, key) >= orig_cost:
            row.reason = _costlier(m, new.rank, getattr(after, key), orig_cost, metric)
            prog.step(path)
            continue
        replacements[id(layer)] = new
        row.replaced = True
        row.rank = getattr(new, "rank", r)
        row.rank = list(row.rank) if isinstance(row.rank, tuple) else row.rank
        row.params_after = after.total_params
        row.macs_after = after.macs if _known(shapes) else None
        row.implementation = getattr(new, "resolved_implementation", None)
        row.relative_error = _relative_error(new, layer, m, spectrum, opts)
        prog.step(path)

    # -- 4. clone, swap, copy weights -----------------------------------------------------
    new_model = _clone(model, replacements)
    try:
        after_total = model_cost(new_model).total
    except ValueError:
        after_total = Cost(*_params(new_model), 0)
    report = ConversionReport(
        method=method_label,
        selection=selection,
        layers=list(rows.values()),
        total_before=before,
        total_after=after_total,
        macs_known=macs_known,
        seconds=time.perf_counter() - t0,
    )
    return new_model, report


def _describe_selection(rank, energy, budget, round_to) -> str:
    if rank is not None:
        text = (
            "rank=<function>"
            if callable(rank) and not isinstance(rank, Mapping)
            else (f"rank={rank!r}")
        )
    elif energy is not None:
        text = f"energy={energy}"
    elif budget is not None:
        text = f"budget={dict(budget)}"
    else:
        text = "full rank (exact)"
    return text + (f", rounded up to multiples of {round_to}" if round_to else "")


def _params(obj) -> tuple[int, int]:
    t = sum(math.prod(w.shape) for w in obj.trainable_weights)
    f = sum(math.prod(w.shape) for w in obj.non_trainable_weights)
    return int(t), int(f)


def _costlier(m, r, cost, orig, metric) -> str:
    unit = "params" if metric == "params" else "MACs"
    return f"{m.name} at rank {r} would not cost less ({cost:,} vs {orig:,} {unit})"


def _skip_reason(layer, path, m, include, exclude, skip_first, first_conv) -> str:
    L = keras.layers
    if m is None:
        return "no method given for this layer"
    if isinstance(layer, L.DepthwiseConv2D):
        return "depthwise conv"
    if isinstance(layer, L.SeparableConv2D):
        return "separable conv"
    if isinstance(layer, L.Conv2DTranspose):
        return "transposed conv"
    if not isinstance(layer, m.source_types()):
        return f"{m.name} replaces {', '.join(m.replaces)} layers only"
    if include is not None and not _matches(include, path, layer):
        return "not matched by include"
    if exclude is not None and _matches(exclude, path, layer):
        return "excluded"
    if skip_first and id(layer) == first_conv:
        return "first conv (skip_first=True)"
    if isinstance(layer, L.Conv2D):
        if getattr(layer, "groups", 1) != 1:
            return f"grouped conv (groups={layer.groups})"
        if layer.data_format != "channels_last":
            return "channels_first conv (only channels_last is supported)"
        if m.spatial_only and tuple(layer.kernel_size) == (1, 1):
            return f"1x1 conv ({m.name} factors spatial taps only)"
    return ""


def _choose_rank(layer, m: Method, opts, r, energy, round_to, spectrum):
    """The rank for one layer (no budget); ``("energy", e)`` lets the layer choose."""
    if m.rank_selection == "layer":
        if r is None and energy is not None:
            return ("energy", energy)
        if r in ("full",):
            return None
        if r in ("effective", "entropy"):
            raise ValueError(
                f"method '{m.name}' chooses its own ranks; rule {r!r} needs a spectrum"
            )
        return tuple(r) if isinstance(r, list) else r
    s = spectrum(layer, m, opts)
    full = len(s)
    if r is None and energy is None or r == "full":
        return full
    if energy is not None:
        rank = rk.energy_rank(s, energy)
    elif r in ("effective", "entropy"):
        rank = rk.effective_rank(s)
    elif r == "vbmf":
        rank = m.vbmf_rank(layer, opts)
    elif isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
        raise ValueError(f"rank {r!r} must be a positive int or a rule in {RANK_RULES}")
    else:
        rank = int(r)
    return rk.round_rank(min(rank, full), round_to, full)


def _relative_error(new, layer, m, spectrum, opts) -> float | None:
    # Spectrum methods truncate optimally: rel_err(r)^2 = 1 - kept energy (no rebuild).
    if m.rank_selection == "spectrum" and isinstance(getattr(new, "rank", None), int):
        return float(rk.relative_errors(spectrum(layer, m, opts))[new.rank - 1])
    if hasattr(new, "relative_error"):
        try:
            return float(new.relative_error(layer))
        except Exception:  # noqa: BLE001 - no error figure for this layer
            pass
    return None


def _clone(model, replacements: dict):
    pairs = []

    def clone_fn(op):
        if id(op) in replacements:
            return replacements[id(op)]
        if not isinstance(op, keras.layers.Layer):
            return op  # keras.ops operations of a functional graph
        new = op.__class__.from_config(op.get_config())
        pairs.append((op, new))
        return new

    try:
        new_model = keras.models.clone_model(model, clone_function=clone_fn, recursive=True)
    except ValueError as err:
        raise ValueError(
            f"convert: keras.models.clone_model failed on '{model.name}': {err}"
        ) from err
    for old, new in pairs:
        if old.weights:
            if len(new.weights) != len(old.weights):
                raise ValueError(
                    f"convert: the clone of layer '{old.name}' has {len(new.weights)} weights, "
                    f"the original {len(old.weights)}; its get_config does not rebuild it."
                )
            for w_new, w_old in zip(new.weights, old.weights):
                w_new.assign(w_old.value)
    return new_model


# ---- command line ------------------------------------------------------------------------


def _applications() -> dict[str, Callable]:
    apps = {}
    for name in dir(keras.applications):
        fn = getattr(keras.applications, name)
        if name[:1].isupper() and callable(fn):
            apps[name.lower().replace("_", "")] = fn
    return apps


def load_model_arg(spec: str, weights: str | None = "imagenet", input_shape=None) -> keras.Model:
    """A ``.keras`` file, or a ``keras.applications`` model by name (case-insensitive)."""
    import os

    if spec.endswith((".keras", ".h5")) or os.path.sep in spec:
        if not os.path.exists(spec):
            raise FileNotFoundError(f"no such model file: {spec}")
        import keras_eigenconv  # noqa: F401  (registers the package's layers)

        return keras.saving.load_model(spec)
    apps = _applications()
    key = spec.lower().replace("_", "").replace("-", "")
    if key not in apps:
        close = difflib.get_close_matches(key, apps, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"'{spec}' is neither a .keras file nor a keras.applications model.{hint} "
            f"Known: {', '.join(sorted(apps))}."
        )
    kwargs = {"weights": None if weights in (None, "none", "None") else weights}
    if input_shape is not None:
        kwargs["input_shape"] = tuple(input_shape)
    try:
        return apps[key](**kwargs)
    except Exception as err:  # noqa: BLE001 - surface constructor/download errors cleanly
        raise ValueError(
            f"could not build {apps[key].__name__}({kwargs}): {err}. Offline, use "
            "--weights none or a local weights file."
        ) from None


def _parse_rank(text: str):
    if text in RANK_RULES:
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive int or one of {', '.join(RANK_RULES)}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"rank must be >= 1, got {value}")
    return value


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not H,W,C (e.g. 224,224,3)") from None
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not H,W,C (e.g. 224,224,3)")
    return shape


def _cli_convert(args) -> int:
    get_method(args.method)  # fail before loading a large model
    if args.energy is not None:
        rk.energy_rank([1.0], args.energy)
    model = load_model_arg(args.model, args.weights, args.input_shape)
    budget = None
    if args.budget_macs is not None:
        budget = {"macs": args.budget_macs}
    elif args.budget_params is not None:
        budget = {"params": args.budget_params}
    new_model, report = convert(
        model,
        method=args.method,
        rank=args.rank,
        energy=args.energy,
        budget=budget,
        include=args.include,
        exclude=args.exclude,
        round_to=args.round_to,
        skip_first=not args.convert_first,
        require_saving=args.require_saving,
        implementation=args.implementation,
        progress=False if args.no_progress else "auto",
    )
    print(report)
    if args.output:
        new_model.save(args.output)
        print(f"saved {args.output}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(report.to_markdown())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_dict(), f, indent=2)
    return 0


def register_cli(subparsers) -> None:
    """Add the ``convert`` command."""
    from .registry import registered_methods

    p = subparsers.add_parser(
        "convert",
        help="replace the Conv2D layers of a model with low-rank layers and print a report",
        description="Convert a keras.applications model (by name) or a .keras file: replace its "
        "Conv2D layers with a low-rank method initialized from the trained weights, print a "
        "per-layer report, optionally save the converted model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  keras-eigenconv convert resnet50 --method decef --energy 0.9 -o resnet50_decef.keras\n"
        "  keras-eigenconv convert mobilenetv2 --weights none --method svd --budget-macs 0.6\n"
        "  keras-eigenconv convert model.keras --method svd --rank vbmf --round-to 8\n"
        f"methods: {', '.join(registered_methods())} (available: "
        f"{', '.join(available_methods())})",
    )
    p.add_argument(
        "model", help="a keras.applications name (resnet50, mobilenetv2, ...) or a .keras file"
    )
    p.add_argument("--method", default="decef", help="registered method name (default: decef)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--rank",
        type=_parse_rank,
        help="an int (clipped per layer), or full, effective (entropy rank) or vbmf",
    )
    g.add_argument("--energy", type=float, help="keep this share of each kernel's squared norm")
    g.add_argument(
        "--budget-macs",
        type=float,
        metavar="X",
        help="allocate ranks so the model has at most X (share if <= 1) of its MACs",
    )
    g.add_argument("--budget-params", type=float, metavar="X", help="same for the parameter count")
    p.add_argument("--round-to", type=int, metavar="M", help="round ranks up to multiples of M")
    p.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="only convert layers whose name matches (repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        metavar="GLOB",
        help="leave layers whose name matches (repeatable)",
    )
    p.add_argument("--convert-first", action="store_true", help="also convert the first conv")
    p.add_argument(
        "--all",
        dest="require_saving",
        action="store_false",
        help="also replace layers whose replacement does not cost less",
    )
    p.add_argument("--implementation", choices=IMPLEMENTATIONS, default="auto")
    p.add_argument(
        "--weights",
        default="imagenet",
        help="passed to the keras.applications constructor: imagenet (default), "
        "none, or a weights file",
    )
    p.add_argument(
        "--input-shape",
        type=_parse_shape,
        metavar="H,W,C",
        help="input shape for a keras.applications model",
    )
    p.add_argument("-o", "--output", help="save the converted model here (.keras)")
    p.add_argument("--markdown", metavar="PATH", help="also write the report as Markdown")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cli_convert)
