"""The method registry: one ``Method`` record per method, holding its layer class.

The converter (``compress.convert``) has no per-method code: everything it needs about a
method is the record (name, layer class, default options, whether it only factors the
spatial taps) and the layer class's contract (``layers.CompressedLayer``: ``from_source``,
``cost``, ``spectrum``, ``rank_for``, ``vbmf_matrices``, ``rank_selection``,
``budget_spectrum``, ``source_type``).

Adding a method is one layer file (a ``CompressedLayer`` subclass) and one ``Method``
record, in ``BUILTIN_METHODS`` below or through ``register_method``; the contract test suite
(``tests/test_contract.py``) then tests it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from .. import decompositions as dec
from ..cost import Cost
from ..layers import (
    BasisConv2D,
    CompressedLayer,
    CPConv2D,
    DeCEFConv2D,
    SSConv2D,
    SVDConv2D,
    TTConv2D,
    TTDense,
    Tucker2Conv2D,
)
from ..layers.base import source_kernel

__all__ = [
    "Method",
    "available_methods",
    "get_method",
    "register_method",
    "registered_methods",
]


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

    Attributes:
        name: The registry key (``convert(model, method=name)``).
        layer: The ``CompressedLayer`` subclass.
        spatial_only: It factors the ``kh x kw`` taps, so 1x1 convs are left as they are.
        options: Default constructor options (e.g. ``{"decomposition": "spatial"}``).
        description: One line for ``--help`` and the report.

    Raises:
        ValueError: When ``layer`` is not a ``CompressedLayer`` subclass, or its
            ``rank_selection`` is not ``"spectrum"`` or ``"layer"``.
    """

    name: str
    layer: type
    spatial_only: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if not (isinstance(self.layer, type) and issubclass(self.layer, CompressedLayer)):
            raise ValueError(
                f"Method '{self.name}': layer must be a CompressedLayer subclass (the layer "
                f"contract of keras_eigenconv.layers), got {self.layer!r}."
            )
        if self.layer.rank_selection not in ("spectrum", "layer"):
            raise ValueError(
                f"Method '{self.name}': {self.layer.__name__}.rank_selection must be "
                f"'spectrum' or 'layer', got {self.layer.rank_selection!r}."
            )

    @property
    def rank_selection(self) -> str:
        """``"spectrum"`` or ``"layer"`` (``CompressedLayer.rank_selection``)."""
        return self.layer.rank_selection

    @property
    def budget_spectrum(self) -> bool:
        return self.layer.budget_spectrum

    @property
    def replaces(self) -> tuple[str, ...]:
        """Names of the ``keras.layers`` classes it replaces."""
        return (self.layer.source_type.__name__,)

    def source_types(self) -> tuple[type, ...]:
        return (self.layer.source_type,)

    def merged_options(self, overrides: Mapping | None = None) -> dict:
        return {**dict(self.options), **dict(overrides or {})}

    # ---- spectra and ranks -------------------------------------------------------------

    def kernel(self, layer) -> np.ndarray:
        return source_kernel(layer)

    def spectrum(self, layer, options: Mapping | None = None) -> np.ndarray:
        """Compute the energy kept by each extra rank, from the layer class's ``spectrum``.

        Args:
            layer: The built source layer.
            options: Overrides of the method's default options.

        Returns:
            The energies, one per rank, descending, as a float64 vector.

        Raises:
            ValueError: When the method chooses its own ranks and has no budget spectrum.
        """
        if self.rank_selection != "spectrum" and not self.budget_spectrum:
            raise ValueError(
                f"Method '{self.name}' chooses its own ranks; pass rank= (its own form) or "
                "energy=, not a rule or budget that needs a spectrum."
            )
        s = self.layer.spectrum(self.kernel(layer), **self.merged_options(options))
        return np.asarray(s, dtype=np.float64).reshape(-1)

    def vbmf_rank(self, layer, options: Mapping | None = None) -> int:
        """Compute the VBMF rank of a layer.

        It is the rounded-up mean of the EVBMF ranks of the layer class's ``vbmf_matrices``.

        Args:
            layer: The built source layer.
            options: Overrides of the method's default options.

        Returns:
            The rank, at least 1.

        Raises:
            ValueError: When the method has no VBMF rule.
        """
        mats = self.layer.vbmf_matrices(self.kernel(layer), **self.merged_options(options))
        if mats is None:
            raise ValueError(f"Method '{self.name}' has no VBMF rule; use energy= or rank=.")
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
        statistics: Mapping | None = None,
    ):
        """Build the replacement of a layer, initialized from its weights.

        Args:
            layer: The built source layer (the replacement takes its name).
            rank: The rank, in the layer class's form.
            energy: The share of the kernel's squared norm to keep, instead of ``rank``.
            implementation: The replacement's ``implementation``.
            options: Overrides of the method's default options.
            statistics: Calibration statistics of the layer (``needed_statistics``): the
                replacement then minimizes its response error on that data.

        Returns:
            The new layer (the layer class's ``from_source``).
        """
        return self.layer.from_source(
            layer,
            rank=rank,
            energy=energy,
            implementation=implementation,
            name=layer.name,
            statistics=statistics,
            **self.merged_options(options),
        )

    def needed_statistics(self, options: Mapping | None = None) -> tuple[str, ...]:
        """The calibration statistics the layer class uses with these options.

        Args:
            options: Overrides of the method's default options.

        Returns:
            The kinds (``()``: the method decomposes the kernel, whatever the data).
        """
        return tuple(self.layer.needed_statistics(**self.merged_options(options)))

    def data_spectrum(self, layer, statistics: Mapping, options: Mapping | None = None):
        """Response energies (descending) of the layer on the calibration data.

        Args:
            layer: The built source layer.
            statistics: Its calibration statistics.
            options: Overrides of the method's default options.

        Returns:
            A 1-D float64 array: ``sum(e[r:]) / sum(e)`` is the squared relative response
            error at rank ``r``.
        """
        s = self.layer.data_spectrum(self.kernel(layer), statistics, **self.merged_options(options))
        return np.asarray(s, dtype=np.float64).reshape(-1)

    def candidate(self, layer, rank, options: Mapping | None = None):
        """Make an unbuilt instance at ``rank`` shaped like ``layer`` (for costing only).

        Args:
            layer: The source ``Conv2D`` or ``Dense`` layer.
            rank: The rank, in the layer class's form.
            options: Overrides of the method's default options.

        Returns:
            The unbuilt layer.
        """
        cls = self.layer
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
        """Count the cost of the replacement of a layer at ``rank``.

        Costs are cached by method, layer shape, rank, options and input shapes.

        Args:
            layer: The source layer.
            rank: The rank, in the layer class's form.
            input_shapes: One input shape per call of the layer, batch axis included.
            options: Overrides of the method's default options.

        Returns:
            The ``Cost``: parameters once, MACs summed over the calls.
        """
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
        """Count the cost of the replacement of a layer at each of several ranks.

        Costs are affine in the rank for every built-in method; this checks that on three
        ranks and extrapolates, else evaluates every rank.

        Args:
            layer: The source layer.
            ranks: The int ranks.
            input_shapes: One input shape per call of the layer, batch axis included.
            options: Overrides of the method's default options.

        Returns:
            A ``(len(ranks), 2)`` array of ``(total params, MACs)`` at each rank.
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
    """Add ``method`` to the registry.

    Args:
        method: The ``Method`` record to register under ``method.name``.
        overwrite: Replace a method already registered under that name.

    Returns:
        The registered ``method``.

    Raises:
        ValueError: When ``method`` is not a ``Method``, or its name is already registered
            and ``overwrite`` is False.
    """
    if not isinstance(method, Method):
        raise ValueError(f"register_method needs a Method, got {type(method).__name__}.")
    if method.name in _REGISTRY and not overwrite:
        raise ValueError(
            f"A method named '{method.name}' is already registered; pass overwrite=True to "
            "replace it."
        )
    _REGISTRY[method.name] = method
    return method


def get_method(method) -> Method:
    """Look up a registered method by name.

    Args:
        method: A registered method name, or a ``Method`` record (returned as it is).

    Returns:
        The ``Method`` record.

    Raises:
        ValueError: When ``method`` is an unknown name (the message lists the registered
            ones) or neither a name nor a ``Method``.
    """
    if isinstance(method, Method):
        return method
    if not isinstance(method, str) or method not in _REGISTRY:
        raise ValueError(f"Unknown method {method!r}. Registered methods: {registered_methods()}.")
    return _REGISTRY[method]


def registered_methods() -> list[str]:
    """List the names of every registered method.

    Returns:
        The registered method names, sorted.
    """
    return sorted(_REGISTRY)


def available_methods() -> list[str]:
    """List the names of the methods available to ``convert``.

    Every registered method is available: a record holds its layer class.

    Returns:
        The registered method names, sorted.
    """
    return registered_methods()


BUILTIN_METHODS = (
    Method(
        "decef",
        DeCEFConv2D,
        spatial_only=True,
        description="depthwise eigen-filters per input channel + 1x1 (DeCEF)",
    ),
    Method(
        "basis",
        BasisConv2D,
        description="fixed basis filters + learned 1x1 combination (BasisConv)",
    ),
    Method(
        "svd",
        SVDConv2D,
        options={"decomposition": "channel"},
        description="channel SVD: kxk conv C->R + 1x1 R->N",
    ),
    Method(
        "svd_spatial",
        SVDConv2D,
        spatial_only=True,
        options={"decomposition": "spatial"},
        description="spatial SVD: kx1 conv C->R + 1xk R->N (Jaderberg et al.)",
    ),
    Method(
        "tucker2",
        Tucker2Conv2D,
        spatial_only=True,
        description="Tucker-2: 1x1 C->R1, kxk R1->R2, 1x1 R2->N (rank int, pair or 'vbmf')",
    ),
    Method(
        "cp",
        CPConv2D,
        spatial_only=True,
        description="CP: 1x1 C->R, depthwise kx1, depthwise 1xk, 1x1 R->N",
    ),
    Method("tt", TTConv2D, description="tensor-train conv (Garipov et al.)"),
    Method("tt_dense", TTDense, description="tensor-train fully connected (Novikov et al.)"),
    Method(
        "ssc",
        SSConv2D,
        spatial_only=True,
        options={"groups": 4},
        description="structured sparse conv, 4 groups; rank = kxk channel-group span",
    ),
)
for _m in BUILTIN_METHODS:
    register_method(_m)
