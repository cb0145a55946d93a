"""The method registry: one ``Method`` record per replacement layer.

The converter (``surgery.convert``) has no per-method code: everything it needs about a method
is here. A record names the layer class (a class, or ``"module:Class"`` imported on first use,
so methods whose module is absent are simply unavailable), the source layer types it replaces,
whether it only factors the spatial taps (then 1x1 convs are skipped), its default options,
how to build it from a source layer (``cls.from_conv2d(conv, rank=..., energy=..., **options)``
or ``from_dense``) and how to cost a candidate rank (an unbuilt instance's ``cost``).

``rank_selection="spectrum"``: the rank is one int and ``cls.spectrum(kernel, **options)``
gives the energy each extra rank keeps (``sum(s[:r]) / sum(s) = 1 - rel_err(r)**2``), so the
converter can choose ranks itself (energy, effective rank, VBMF, whole-model budgets).
``rank_selection="layer"``: the rank is the layer's own business (Tucker-2 pairs, CP's ALS
search, TT rank lists); ``rank`` and ``energy`` are passed through to ``from_conv2d``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from . import decompositions as dec
from .cost import Cost

__all__ = [
    "Method",
    "available_methods",
    "get_method",
    "register_method",
    "registered_methods",
]


def _per_channel_matrices(kernel: np.ndarray, options: dict) -> list[np.ndarray]:
    kh, kw, c, n = kernel.shape
    return list(np.transpose(kernel, (2, 0, 1, 3)).reshape(c, kh * kw, n))


def _filter_matrix(kernel: np.ndarray, options: dict) -> list[np.ndarray]:
    kh, kw, c, n = kernel.shape
    return [kernel.reshape(kh * kw * c, n)]


def _svd_matrices(kernel: np.ndarray, options: dict) -> list[np.ndarray]:
    if options.get("decomposition", "channel") == "spatial":
        kh, kw, c, n = kernel.shape
        return [np.transpose(kernel, (0, 2, 1, 3)).reshape(kh * c, kw * n)]
    return _filter_matrix(kernel, options)


# Costs of candidate (layer shape, rank) pairs: building an unbuilt layer is slow (it creates
# a seed variable) and models repeat the same conv shapes many times.
_COST_CACHE: dict[tuple, Cost] = {}


def _shape_config(layer) -> tuple:
    if isinstance(layer, keras.layers.Dense):
        return (layer.units, layer.use_bias)
    return (
        layer.filters,
        tuple(layer.kernel_size),
        tuple(layer.strides),
        layer.padding,
        tuple(layer.dilation_rate),
        layer.use_bias,
    )


@dataclass(frozen=True)
class Method:
    """How to replace a layer by one method.

    - ``name``: the registry key (``convert(model, method=name)``).
    - ``layer``: the layer class, or ``"package.module:ClassName"`` (imported lazily).
    - ``replaces``: names of the ``keras.layers`` classes it replaces (``"Conv2D"``,
      ``"Dense"``).
    - ``spatial_only``: it factors the ``kh x kw`` taps, so 1x1 convs are left as they are.
    - ``options``: default constructor options (e.g. ``{"decomposition": "spatial"}``).
    - ``rank_selection``: ``"spectrum"`` or ``"layer"`` (see the module docstring).
    - ``vbmf_matrices``: ``fn(kernel, options) -> [matrices]``; ``rank="vbmf"`` takes the
      rounded-up mean of their EVBMF ranks (``None``: VBMF is up to the layer, or
      unsupported).
    - ``budget_spectrum``: for ``rank_selection="layer"``: the class's 1-D ``spectrum``
      (its int rank) is a usable error proxy, so whole-model budgets work (Tucker-2).
    - ``description``: one line for ``--help`` and the report.
    """

    name: str
    layer: Any
    replaces: tuple[str, ...] = ("Conv2D",)
    spatial_only: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    rank_selection: str = "spectrum"
    vbmf_matrices: Callable | None = None
    budget_spectrum: bool = False
    description: str = ""

    def layer_class(self) -> type:
        """The layer class (imports its module on first use)."""
        if not isinstance(self.layer, str):
            return self.layer
        module, _, cls = self.layer.partition(":")
        try:
            return getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as err:
            raise ValueError(
                f"Method '{self.name}' needs {self.layer}, which this installation does not "
                f"provide ({err}). Pick one of {available_methods()}."
            ) from None

    @property
    def available(self) -> bool:
        try:
            self.layer_class()
        except ValueError:
            return False
        return True

    def source_types(self) -> tuple[type, ...]:
        return tuple(getattr(keras.layers, n) for n in self.replaces)

    def merged_options(self, overrides: Mapping | None = None) -> dict:
        return {**dict(self.options), **dict(overrides or {})}

    # ---- spectra and ranks -------------------------------------------------------------

    def kernel(self, layer) -> np.ndarray:
        return np.asarray(keras.ops.convert_to_numpy(layer.kernel), dtype=np.float64)

    def spectrum(self, layer, options: Mapping | None = None) -> np.ndarray:
        """Energy kept by each extra rank (descending), from the class's ``spectrum``."""
        if self.rank_selection != "spectrum" and not self.budget_spectrum:
            raise ValueError(
                f"Method '{self.name}' chooses its own ranks; pass rank= (its own form) or "
                "energy=, not a rule or budget that needs a spectrum."
            )
        s = self.layer_class().spectrum(self.kernel(layer), **self.merged_options(options))
        return np.asarray(s, dtype=np.float64).reshape(-1)

    def vbmf_rank(self, layer, options: Mapping | None = None) -> int:
        """VBMF rank (at least 1) from ``vbmf_matrices``."""
        if self.vbmf_matrices is None:
            raise ValueError(f"Method '{self.name}' has no VBMF rule; use energy= or rank=.")
        mats = self.vbmf_matrices(self.kernel(layer), self.merged_options(options))
        ranks = [dec.vbmf_rank(m) for m in mats]
        return max(1, int(math.ceil(float(np.mean(ranks)))))

    # ---- building and costing ----------------------------------------------------------

    def build(
        self,
        layer,
        rank=None,
        energy: float | None = None,
        implementation: str = "auto",
        options: Mapping | None = None,
    ):
        """The replacement of the built ``layer``, initialized from its weights."""
        cls = self.layer_class()
        opts = self.merged_options(options)
        if isinstance(layer, keras.layers.Dense) and hasattr(cls, "from_dense"):
            make = cls.from_dense
        else:
            make = cls.from_conv2d
        return make(
            layer, rank=rank, energy=energy, implementation=implementation, name=layer.name, **opts
        )

    def candidate(self, layer, rank, options: Mapping | None = None):
        """An unbuilt instance at ``rank`` shaped like ``layer`` (for costing only)."""
        cls = self.layer_class()
        opts = self.merged_options(options)
        if isinstance(layer, keras.layers.Dense):
            return cls(units=layer.units, rank=rank, use_bias=layer.use_bias, **opts)
        return cls(
            filters=layer.filters,
            kernel_size=layer.kernel_size,
            rank=rank,
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            use_bias=layer.use_bias,
            name=f"{layer.name}_candidate",
            **opts,
        )

    def cost(self, layer, rank, input_shapes, options: Mapping | None = None) -> Cost:
        """Cost of the replacement at ``rank``: parameters once, MACs summed over the calls
        on ``input_shapes`` (one shape per call, batch axis included)."""
        key = (
            self.name,
            type(layer).__name__,
            repr(_shape_config(layer)),
            repr(rank),
            repr(sorted(self.merged_options(options).items())),
            repr([tuple(s) for s in input_shapes]),
        )
        if key in _COST_CACHE:
            return _COST_CACHE[key]
        cand = self.candidate(layer, rank, options)
        total = Cost()
        for i, shape in enumerate(input_shapes):
            c = cand.cost(tuple(shape))
            total = Cost(c.params, c.fixed_params, total.macs + c.macs) if i else c
        if len(_COST_CACHE) > 4096:
            _COST_CACHE.clear()
        _COST_CACHE[key] = total
        return total

    def rank_costs(self, layer, ranks, input_shapes, options=None) -> np.ndarray:
        """``(len(ranks), 2)`` array of ``(total params, MACs)`` at each rank.

        Costs are affine in the rank for every built-in method; this checks that on three
        ranks and extrapolates, else evaluates every rank.
        """
        ranks = [int(r) for r in ranks]

        def one(r):
            c = self.cost(layer, r, input_shapes, options)
            return np.array([c.total_params, c.macs], dtype=np.float64)

        if len(ranks) <= 3:
            return np.stack([one(r) for r in ranks])
        a, b, z = one(ranks[0]), one(ranks[1]), one(ranks[-1])
        slope = (b - a) / (ranks[1] - ranks[0])
        if np.allclose(a + slope * (ranks[-1] - ranks[0]), z, rtol=0, atol=0.5):
            return np.stack([a + slope * (r - ranks[0]) for r in ranks]).round()
        return np.stack([one(r) for r in ranks])


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method, overwrite: bool = False) -> Method:
    """Add ``method`` to the registry (``overwrite=True`` to replace a name)."""
    if not isinstance(method, Method):
        raise ValueError(f"register_method needs a Method, got {type(method).__name__}.")
    if method.rank_selection not in ("spectrum", "layer"):
        raise ValueError(
            f"Method '{method.name}': rank_selection must be 'spectrum' or 'layer', got "
            f"{method.rank_selection!r}."
        )
    if method.name in _REGISTRY and not overwrite:
        raise ValueError(
            f"A method named '{method.name}' is already registered; pass overwrite=True to "
            "replace it."
        )
    _REGISTRY[method.name] = method
    return method


def get_method(method) -> Method:
    """A ``Method`` by name (or the record itself), checking that it is available."""
    if isinstance(method, Method):
        method.layer_class()
        return method
    if not isinstance(method, str) or method not in _REGISTRY:
        raise ValueError(
            f"Unknown method {method!r}. Registered methods: {registered_methods()} "
            f"(available here: {available_methods()})."
        )
    m = _REGISTRY[method]
    m.layer_class()
    return m


def registered_methods() -> list[str]:
    """Names of every registered method."""
    return sorted(_REGISTRY)


def available_methods() -> list[str]:
    """Names of the registered methods whose layer class can be imported."""
    return sorted(n for n, m in _REGISTRY.items() if m.available)


_P = "keras_eigenconv."
for _m in (
    Method(
        "decef",
        _P + "decef:DeCEFConv2D",
        spatial_only=True,
        vbmf_matrices=_per_channel_matrices,
        description="depthwise eigen-filters per input channel + 1x1 (DeCEF)",
    ),
    Method(
        "basis",
        _P + "basis:BasisConv2D",
        vbmf_matrices=_filter_matrix,
        description="fixed basis filters + learned 1x1 combination (BasisConv)",
    ),
    Method(
        "svd",
        _P + "svd:SVDConv2D",
        options={"decomposition": "channel"},
        vbmf_matrices=_svd_matrices,
        description="channel SVD: kxk conv C->R + 1x1 R->N",
    ),
    Method(
        "svd_spatial",
        _P + "svd:SVDConv2D",
        spatial_only=True,
        options={"decomposition": "spatial"},
        vbmf_matrices=_svd_matrices,
        description="spatial SVD: kx1 conv C->R + 1xk R->N (Jaderberg et al.)",
    ),
    Method(
        "tucker2",
        _P + "tucker:Tucker2Conv2D",
        spatial_only=True,
        rank_selection="layer",
        budget_spectrum=True,
        description="Tucker-2: 1x1 C->R1, kxk R1->R2, 1x1 R2->N (rank int, pair or 'vbmf')",
    ),
    Method(
        "cp",
        _P + "cp:CPConv2D",
        spatial_only=True,
        rank_selection="layer",
        description="CP: 1x1 C->R, depthwise kx1, depthwise 1xk, 1x1 R->N",
    ),
    Method(
        "tt",
        _P + "tt:TTConv2D",
        rank_selection="layer",
        description="tensor-train conv (Garipov et al.)",
    ),
    Method(
        "tt_dense",
        _P + "tt:TTDense",
        replaces=("Dense",),
        rank_selection="layer",
        description="tensor-train fully connected (Novikov et al.)",
    ),
    Method(
        "ssc",
        _P + "ssc:SSConv2D",
        spatial_only=True,
        options={"groups": 4},
        description="structured sparse conv, 4 groups; rank = kxk channel-group span",
    ),
):
    register_method(_m)
