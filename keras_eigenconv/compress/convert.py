"""Model surgery: replace the ``Conv2D`` (and ``Dense``) layers of a whole model.

``convert(model, method=..., rank=/energy=/budget=...)`` copies a Functional, Sequential or
subclassed model with ``graph.clone_model`` (nested models included, shared layers stay
shared; a subclassed model's layers are replaced in the attributes of a copy), swaps
the chosen layers for replacements initialized by decomposing their trained weights
(``Method.build`` = the layer class's ``from_source``), copies every other layer's weights
exactly (fresh buffers), and returns the new model with a ``ConversionReport``. The user's
model is not modified.

Methods come from ``registry`` only: this module has no per-method branches.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np

from .. import decompositions as dec
from .. import graph
from ..cost import Cost, layer_cost, model_cost
from ..decompositions import shared_work, spill_shared
from ..layers.base import IMPLEMENTATIONS
from . import calibration as cal
from . import ranks as rk
from .registry import Method, get_method
from .report import ConversionReport, LayerReport, Progress

__all__ = ["RANK_RULES", "convert", "shared_work", "spill_shared"]

RANK_RULES = ("full", "effective", "entropy", "vbmf")
_LISTED_TYPES = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D,
    keras.layers.Conv2DTranspose,
)
_NOMINAL_HW = 56  # spatial size used to compare costs when a model's input size is unknown


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


def _shapes(layer, shape_map: dict, nominal: bool = False) -> list[tuple]:
    shapes = shape_map.get(id(layer), [])
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


def _sharing_work(fn):
    """Run ``fn`` inside ``decompositions.shared_work()``: a layer's spectrum (rank choice)
    and its decomposition share their Gram matrix or SVD (bit-identical results)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with dec.shared_work():
            return fn(*args, **kwargs)

    return wrapper


@_sharing_work
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
    strict: bool = True,
    progress: bool | str = "auto",
    calibration_data=None,
    calibration_steps: int | None = None,
    calibration_batch_size: int = 16,
    refit: bool = True,
    batchnorm: str | None = "correct",
) -> tuple[keras.Model, ConversionReport]:
    """Replace the conv (and dense) layers of ``model`` by compressed layers.

    The model is copied with ``graph.clone_model`` (nested models included, shared layers
    stay shared); the chosen layers are swapped for replacements initialized by decomposing
    their trained weights (``Method.build``, i.e. the layer class's ``from_source``); every
    other layer's weights are copied exactly (fresh buffers). The user's model is not
    modified.

    Ranks come from at most one of ``rank``, ``energy`` and ``budget``; with none of them,
    the full (exact) rank. Defaults leave as they are: the first conv (``skip_first``), 1x1
    convs for spatial-only methods, depthwise/separable/grouped/transposed convs, and (with
    ``require_saving``) layers whose replacement would not cost fewer MACs (params for a
    params budget).

    Args:
        model: A built ``keras.Model``: Functional or Sequential (custom layers inside are
            rebuilt whole), or subclassed (copied from its config like Keras' own
            ``clone_model``, then the layers held in its attributes, lists, dicts, nested
            blocks and nested graph models are replaced in the copy, which keeps the
            model's class and ``call``; 4-D weights used directly in a ``call`` are
            reported as not convertible). Each layer is costed at the input shapes it sees
            in ``model`` (``graph.layer_input_shapes``).
        method: A registered name (``registry.available_methods()``), a ``Method``, a
            mapping ``{layer pattern: method or None}`` (first match; unmatched layers are
            kept), or ``fn(layer) -> method or None``.
        rank: An int (clipped to each layer's maximum); ``"full"``; ``"effective"`` or
            ``"entropy"`` (the Roy-Vetterli rank); ``"vbmf"``; a mapping
            ``{pattern: rank}``; or ``fn(layer) -> rank or None``.
        energy: The smallest rank keeping that share of each kernel's squared norm.
        budget: ``{"macs": x}`` or ``{"params": x}``, ``x <= 1`` a share of the model's
            total, else a count: ranks are allocated across layers to meet it with the least
            total squared relative error. A MACs budget needs a fixed input size.
        include: Layers to consider: name globs (``"conv4_*"``, matched against the layer
            name and its ``outer/inner`` path), layer classes, predicates, or lists of these.
        exclude: Layers to leave as they are, in the same forms as ``include``.
        round_to: Ranks rounded up to multiples of it (8, 16, 32: faster kernels).
        skip_first: Leave the model's first conv as it is.
        require_saving: Leave a layer as it is when its replacement would not cost fewer
            MACs (params for a params budget).
        implementation: The implementation of every replacement (one of
            ``layers.base.IMPLEMENTATIONS``, ``"auto"`` by default).
        options: Extra constructor options for the method's layer (e.g.
            ``{"batch_norm": True}``).
        strict: With a ``budget``: raise when the converted model misses it (e.g. a layer
            the allocation reduced could not be decomposed); ``False`` returns the model
            anyway with ``report.budget_met == False`` and a ``UserWarning`` naming the
            layers that could not be reduced. A budget is never missed silently.
        progress: A progress bar on stderr: ``True``, ``False``, or ``"auto"`` (on a
            terminal, 10+ layers).
        calibration_data: Unlabeled inputs of the model (an array ``(n, *input_shape)``,
            a ``tf.data.Dataset`` or an iterable of batches, preprocessed as for the
            model), a few hundred typical ones. With it, conversion is data-aware
            (``compress.calibration``): each layer is decomposed to minimize the error of
            its *responses* on the data (methods whose layer class cannot use data, see
            ``needed_statistics``, decompose the kernel and say so in the report), ranks
            and budgets follow the measured response error (``energy`` is then the share of
            the response energy kept), the converted layers' last linear maps and biases
            are refitted to the original network's responses (``refit``), BatchNorm
            statistics follow the change (``batchnorm``), and the report gives
            each layer's measured output error and the model's output agreement on the last
            eighth of the batches (held out). Without it, behaviour is data-free.
        calibration_steps: At most this many batches of ``calibration_data`` (``None``:
            all of it).
        calibration_batch_size: Rows per batch for array ``calibration_data``.
        refit: With calibration data, refit each converted layer's last linear map and
            bias (asymmetric reconstruction), or correct its bias for the mean shift.
        batchnorm: With calibration data, what happens to the BatchNorm moving statistics:
            ``"correct"`` (default) shifts and scales them by the change of their inputs'
            mean and spread that the conversion caused, measured on the data
            (``calibration.reconstruct``; nothing changes at full rank); ``"reestimate"``
            re-estimates them from the data (``recalibrate_batchnorm``; this also changes a
            model whose statistics did not match the data); ``None`` leaves them.

    Returns:
        A tuple ``(new_model, report)``: the converted model and its ``ConversionReport``.

    Raises:
        ValueError: When ``model`` is not a ``keras.Model`` or is not built (or, subclassed,
            cannot be rebuilt from its config);
            when more than one of ``rank``, ``energy`` and ``budget`` is given, or one of
            them, ``round_to``, ``implementation`` or ``method`` is invalid; when a MACs
            budget is given for a model without a fixed input size, or the budget cannot be
            met (with ``strict=True``: also when the converted model misses it); or when
            the model cannot be cloned.
    """
    t0 = time.perf_counter()
    if not isinstance(model, keras.Model):
        raise ValueError(f"convert needs a keras.Model, got {type(model).__name__}.")
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
    if batchnorm not in ("correct", "reestimate", None):
        raise ValueError(
            f"convert: batchnorm must be 'correct', 'reestimate' or None, got {batchnorm!r}."
        )
    batches = (
        cal.calibration_batches(calibration_data, model, calibration_steps, calibration_batch_size)
        if calibration_data is not None
        else None
    )

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
    layers = list(graph.walk(model))
    shape_map = graph.layer_input_shapes(model)  # the shapes each layer sees in `model`
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
        shapes = _shapes(layer, shape_map)
        before_cost = (
            _summed_cost(
                lambda s, lay=layer: layer_cost(lay, s),
                shapes if _known(shapes) else _shapes(layer, shape_map, nominal=True),
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

    # -- 1b. calibration statistics (one pass of the original model) ----------------------
    statistics: dict[int, dict] = {}
    timings: dict[str, float] = {}
    if batches is not None:
        n_held = max(1, len(batches) // 8) if len(batches) > 1 else 0
        fit_batches = batches[: len(batches) - n_held] if n_held else batches
        held_batches = batches[len(batches) - n_held :] if n_held else batches
        wanted = {
            id(layer): (layer, m.needed_statistics(opts))
            for _, layer, m, opts, _, _ in plans
            if m.needed_statistics(opts)
        }
        if wanted:
            t = time.perf_counter()
            collected = cal.collect_statistics(model, wanted, fit_batches)
            statistics = {k: v.moments() for k, v in collected.items()}
            timings["statistics"] = time.perf_counter() - t

    for path, layer, kernels in graph.raw_kernels(model):  # convs without a layer to replace
        names = ", ".join(f"'{w.name}' {tuple(w.shape)}" for w in kernels)
        rows[id(layer)] = LayerReport(
            name=path or model.name,
            type=type(layer).__name__,
            params_before=sum(math.prod(w.shape) for w in kernels),
            params_after=sum(math.prod(w.shape) for w in kernels),
            reason=f"cannot convert: its call uses the 4-D weight(s) {names} directly (e.g. "
            "ops.conv), not through a Conv2D layer",
        )

    # -- 2. ranks -------------------------------------------------------------------------
    prog = Progress(
        len(plans),
        progress is True or (progress == "auto" and len(plans) >= 10 and sys.stderr.isatty()),
    )
    spectra: dict[int, np.ndarray] = {}

    def spectrum(layer, m, opts):
        if id(layer) not in spectra:
            stats = statistics.get(id(layer))
            spectra[id(layer)] = (
                m.data_spectrum(layer, stats, opts)
                if stats is not None
                else m.spectrum(layer, opts)
            )
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
            # one kernel held at a time: read again (its results kept) if it is replaced
            spill_shared(getattr(layer, "kernel", None))
            cand = rk.candidate_ranks(len(s), round_to)
            err2 = rk.relative_errors(s)[cand - 1] ** 2
            # unknown input sizes (a params budget): costed at the nominal size, whose
            # parameter counts are those of any size
            sized = shapes if _known(shapes) else _shapes(layer, shape_map, nominal=True)
            costs = m.rank_costs(layer, cand, sized, opts)[:, idx]
            orig = row.params_before if metric == "params" else row.macs_before
            kept_cost += orig
            items.append(rk.BudgetItem(id(layer), cand, err2, costs, float(orig)))
        try:
            alloc = rk.allocate_budget(items, target, fixed_cost=total - kept_cost)
        except ValueError as err:
            full = [int(it.ranks.max(initial=0)) for it in items]
            if round_to is not None and full and all(round_to >= r for r in full):
                raise ValueError(
                    f"{err} round_to={round_to} is not below the full rank of any replaceable "
                    f"layer (at most {max(full)} here, e.g. DeCEF's kh*kw), so every rank is "
                    "rounded up to it: use a smaller round_to, or none."
                ) from err
            raise
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
            finally:
                spill_shared(getattr(layer, "kernel", None))  # as above

    # -- 3. build the replacements --------------------------------------------------------
    for _, layer, _, _, _, _ in plans:  # what the layers kept computed is not needed again
        if id(layer) not in chosen:
            dec.release_shared(layer.kernel)
    replacements = {}
    for path, layer, m, opts, shapes, row in plans:
        if id(layer) not in chosen:
            prog.step(path)
            continue
        r = chosen[id(layer)]
        check_shapes = shapes if _known(shapes) else _shapes(layer, shape_map, nominal=True)
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
            stats = statistics.get(id(layer))
            if isinstance(r, tuple) and r and r[0] == "energy":
                new = m.build(
                    layer,
                    energy=r[1],
                    implementation=implementation,
                    options=opts,
                    statistics=stats,
                )
            else:
                new = m.build(
                    layer, rank=r, implementation=implementation, options=opts, statistics=stats
                )
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
        row.rank = list(new.rank) if isinstance(new.rank, tuple) else new.rank
        row.params_after = after.total_params
        row.macs_after = after.macs if _known(shapes) else None
        row.implementation = new.resolved_implementation
        if id(layer) in statistics:
            row.objective = "data"
            row.relative_error = float(new.relative_error(layer))
        else:
            row.objective = "kernel"
            row.relative_error = _relative_error(new, layer, m, spectrum, opts)
        dec.release_shared(layer.kernel)
        prog.step(path)

    # -- 4. clone, swap, copy weights -----------------------------------------------------
    try:
        new_model = graph.clone_model(model, replace=lambda layer: replacements.get(id(layer)))
    except ValueError as err:
        raise ValueError(f"convert: {err}") from err
    calibration = None
    if batches is not None:
        calibration = _calibrate(
            model,
            new_model,
            plans,
            replacements,
            rows,
            fit_batches,
            held_batches,
            refit,
            batchnorm,
            timings,
        )
    try:
        after_total = model_cost(new_model).total
    except ValueError:
        after_total = Cost(*_params(new_model), 0)
    budget_met, budget_message = _budget_outcome(
        budget, metric, value, before, after_total, plans, chosen, replacements
    )
    report = ConversionReport(
        method=method_label,
        selection=selection,
        layers=list(rows.values()),
        total_before=before,
        total_after=after_total,
        macs_known=macs_known,
        seconds=time.perf_counter() - t0,
        calibration=calibration,
    )
    report.budget_met = budget_met
    if budget_met is False:
        if strict:
            raise ValueError(
                f"convert: {budget_message} Fix or exclude those layers (exclude=[...]), "
                "lower the budget, or pass strict=False to get the model anyway "
                "(report.budget_met is then False)."
            )
        warnings.warn(f"convert: {budget_message}", UserWarning, stacklevel=2)
    return new_model, report


def _budget_outcome(budget, metric, value, before, after, plans, chosen, replacements):
    """``(met, message)``: whether the converted model meets ``budget`` (None without
    one) and, when it does not, why (the layers the allocation reduced but that could not
    be replaced, with their reasons)."""
    if budget is None:
        return None, ""
    total = before.total_params if metric == "params" else before.macs
    goal = value * total if value <= 1 else value
    achieved = after.total_params if metric == "params" else after.macs
    if achieved <= goal:
        return True, ""
    failed = [
        f"{row.name} ({row.reason})"
        for _, layer, _, _, _, row in plans
        if id(layer) in chosen and id(layer) not in replacements
    ]
    unit = "parameters" if metric == "params" else "MACs"
    why = (
        f"these layers could not be reduced: {'; '.join(failed)}."
        if failed
        else "the built layers cost more than the allocation estimated."
    )
    return False, (
        f"the budget {dict(budget)} was missed: the converted model has {achieved:,} "
        f"{unit}, {achieved / max(total, 1):.3f} of the original's {total:,} (target "
        f"{goal:,.0f}), because {why}"
    )


def _calibrate(
    model,
    new_model,
    plans,
    replacements,
    rows,
    fit_batches,
    held_batches,
    refit,
    batchnorm,
    timings,
) -> dict:
    """The data-aware steps after the replacements are built: refit and BatchNorm
    correction (or re-estimation), measurement on the held-out batches. Updates ``rows``."""
    pairs = {
        id(layer): (layer, replacements[id(layer)])
        for _, layer, _, _, _, _ in plans
        if id(layer) in replacements
    }
    t = time.perf_counter()
    done = cal.reconstruct(
        model, new_model, pairs, fit_batches, refit=refit, batchnorm=batchnorm == "correct"
    )
    timings["reconstruct"] = time.perf_counter() - t
    n_bn = done.pop("batchnorms")
    for key, what in done.items():
        if what != "none":
            rows[key].objective += "+" + what
    if batchnorm == "reestimate":
        t = time.perf_counter()
        n_bn = cal.recalibrate_in_place(new_model, fit_batches)
        timings["reestimate_batchnorm"] = time.perf_counter() - t
    t = time.perf_counter()
    layer_errors, whole = cal.measure(model, new_model, pairs, held_batches)
    timings["measure"] = time.perf_counter() - t
    for key, e in layer_errors.items():
        rows[key].output_error = e
    return {
        "fit_samples": int(sum(len(b) for b in fit_batches)),
        "heldout_samples": int(sum(len(b) for b in held_batches)),
        "heldout_is_fit_data": held_batches is fit_batches,
        "top1_agreement": whole.get("top1_agreement"),
        "relative_error": whole["relative_error"],
        "batchnorm": batchnorm,
        "batchnorms_changed": int(n_bn),
        "seconds": dict(timings),
    }


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
        if layer.groups != 1:
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


def _relative_error(new, layer, m, spectrum, opts) -> float:
    # Spectrum methods truncate optimally: rel_err(r)^2 = 1 - kept energy (no rebuild).
    if m.rank_selection == "spectrum" and isinstance(new.rank, int):
        return float(rk.relative_errors(spectrum(layer, m, opts))[new.rank - 1])
    return float(new.relative_error(layer))
