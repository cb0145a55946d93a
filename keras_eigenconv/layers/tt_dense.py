"""``TTDense``: a ``Dense`` layer whose kernel is a TT-matrix (Novikov et al. 2015,
"Tensorizing Neural Networks").

``M = prod m_i``, ``N = prod n_i``,
``W[(i1..id), (j1..jd)] = G_1[:, i1, j1, :] ... G_d[:, id, jd, :]``, cores
``G_i (r_{i-1}, m_i, n_i, r_i)``, ``r_0 = r_d = 1``; weights ``sum r_{i-1} m_i n_i r_i``.
Mode factorizations are C-order (``i1`` most significant); ``"auto"`` modes factor ``M`` and
``N`` into ``num_modes`` balanced modes (``decompositions.balanced_modes``).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from .. import decompositions as dec
from ..cost import Cost
from ._tt import (
    _bond_ranks,
    _gaussian_cores,
    _num_modes,
    _pad_cores,
    _rank_arg,
    _target_variance,
    _tt_contract,
    _tt_contract_macs,
    _tt_rebuild,
    check_tt_size,
    resolve_modes,
)
from .base import (
    AUTO_FACTORIZED_THRESHOLD,
    CompressedLayer,
    _cost_input_shape,
    check_energy,
    check_rank_or_energy,
    check_source,
    copied_layer_args,
    set_weight_args,
    weights_config,
)

__all__ = ["TTDense"]


@keras.saving.register_keras_serializable(package="keras_eigenconv")
class TTDense(CompressedLayer):
    """``Dense`` whose ``(M, N)`` kernel is a TT-matrix (Novikov et al. 2015).

    Weights: cores ``core_i (r_{i-1}, m_i, n_i, r_i)``, ``r_0 = r_d = 1``, with
    ``W[(i1..id), (j1..jd)] = G_1[:, i1, j1, :] ... G_d[:, id, jd, :]``, and the bias.

    From scratch the cores are Gaussian with one ``sigma`` chosen so that the rebuilt
    kernel has the variance of ``kernel_initializer`` (Glorot: ``2 / (M + N)``).
    ``from_dense``: TT-SVD, exact at the full TT-ranks; ``energy=e`` bounds the relative
    error by ``sqrt(1 - e)``.

    Args:
        units: positive int, the number ``N`` of outputs.
        rank: one int capping every inner TT-rank, or ``d-1`` ints (the paper's
            ``[1, r, ..., r, 1]`` form is accepted). Ranks above the full TT-ranks are
            accepted while the cores hold at most ``max(M*N, 65536)`` parameters
            (``build`` raises otherwise, before allocating anything).
        in_modes: ``"auto"`` or a factorization ``(m_1, ..., m_d)`` of the input features
            ``M`` (C-order, ``i1`` most significant).
        out_modes: ``"auto"`` or a factorization ``(n_1, ..., n_d)`` of ``units``.
        num_modes: int, the number ``d`` of modes for ``"auto"`` (balanced modes, default
            3); explicit mode lists set it.
        activation: activation applied after the bias (``None``: linear).
        use_bias: whether the layer adds a bias of shape ``(units,)``.
        implementation: ``"factorized"`` (core contractions,
            ``sum_i (prod_{j<i} n_j) r_{i-1} m_i n_i r_i (prod_{j>i} m_j)`` MACs per row),
            ``"dense"`` (rebuild ``W`` and one matmul) or ``"auto"`` (the fewer MACs:
            factorized only below 0.9 of ``M*N``).
        kernel_initializer: initializer of the equivalent ``(M, N)`` kernel; the cores get
            its variance.
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of every core.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the layer's output.
        kernel_constraint: constraint of every core.
        bias_constraint: constraint of the bias.
        seed: int or ``None``, the seed of the cores' Gaussian draws.
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``,
            ``trainable``).

    Input shape:
        N-D tensor ``(batch, ..., M)``, ``M`` known.

    Output shape:
        N-D tensor ``(batch, ..., units)``.

    Raises:
        ValueError: when ``units``, the modes, ``num_modes``, ``rank`` or
            ``implementation`` are invalid.

    Example:

    >>> dense = keras.layers.Dense(256)
    >>> dense.build((None, 512))
    >>> layer = TTDense.from_dense(dense, rank=8)
    >>> layer.modes(512), layer.tt_ranks(512)
    (((8, 8, 8), (8, 8, 4)), (1, 8, 8, 1))
    >>> layer.cost((None, 512)).params
    5120
    """

    source_type = keras.layers.Dense
    rank_selection = "layer"

    def __init__(
        self,
        units: int,
        rank,
        in_modes="auto",
        out_modes="auto",
        num_modes: int = 3,
        activation=None,
        use_bias: bool = True,
        implementation: str = "auto",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        who = self._who
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units < 1:
            raise ValueError(f"{who}: units must be a positive int, got {units!r}.")
        self.units = int(units)
        self.num_modes = _num_modes(who, num_modes, in_modes, out_modes)
        self.in_modes = in_modes if isinstance(in_modes, str) else tuple(int(m) for m in in_modes)
        if isinstance(in_modes, str):
            resolve_modes(1, in_modes, 1, who, "in_modes")
        self._out_modes_arg = out_modes if isinstance(out_modes, str) else tuple(out_modes)
        self.out_modes = resolve_modes(self.units, out_modes, self.num_modes, who, "out_modes")
        self.rank = _rank_arg(who, rank, self.num_modes - 1, pad_ones=2)
        set_weight_args(
            self,
            who,
            implementation,
            activation,
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            kernel_constraint,
            bias_constraint,
            seed,
        )
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self._resolved_implementation = None

    def modes(self, in_features: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The mode factorizations for ``in_features`` inputs.

        Args:
            in_features: the number ``M`` of input features.

        Returns:
            ``(in_modes, out_modes)`` as tuples of ints.
        """
        ins = resolve_modes(in_features, self.in_modes, self.num_modes, self._who, "in_modes")
        return ins, self.out_modes

    def max_rank(self, in_features: int) -> list[int]:
        """The full inner TT-ranks ``[r_1, ..., r_{d-1}]`` (``tt_matrix_max_ranks``)."""
        return dec.tt_matrix_max_ranks(*self.modes(in_features))

    def tt_ranks(self, in_features: int) -> tuple[int, ...]:
        """The layer's TT-ranks.

        Args:
            in_features: the number ``M`` of input features.

        Returns:
            ``(1, r_1, ..., r_{d-1}, 1)``.
        """
        return (1, *_bond_ranks(self.rank, self.max_rank(in_features)), 1)

    def core_shapes(self, in_features: int) -> list[tuple[int, int, int, int]]:
        """The shapes ``(r_{i-1}, m_i, n_i, r_i)`` of the cores, in order."""
        r = self.tt_ranks(in_features)
        ins, outs = self.modes(in_features)
        return [(r[i], m, n, r[i + 1]) for i, (m, n) in enumerate(zip(ins, outs))]

    def build(self, input_shape):
        m = input_shape[-1]
        if m is None:
            raise ValueError(f"{self._who}: the last axis of the input must be known.")
        m = int(m)
        full = self.max_rank(m)
        params = sum(math.prod(s) for s in self.core_shapes(m))
        check_tt_size(self._who, _bond_ranks(self.rank, full), full, params, m * self.units)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: m})
        self.cores = []
        for i, shape in enumerate(self.core_shapes(m)):
            self.cores.append(
                self.add_weight(
                    name=f"core_{i + 1}",
                    shape=shape,
                    initializer="zeros",
                    regularizer=self.kernel_regularizer,
                    constraint=self.kernel_constraint,
                )
            )
        self.bias = (
            self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
            if self.use_bias
            else None
        )
        variance = _target_variance(self.kernel_initializer, (m, self.units), m, self.units)
        values = _gaussian_cores(
            self.core_shapes(m), self.tt_ranks(m)[1:-1], variance, self.seed_generator
        )
        self.set_cores(values)
        factorized = self.factorized_macs(m) < AUTO_FACTORIZED_THRESHOLD * m * self.units
        self._resolved_implementation = (
            self.implementation
            if self.implementation != "auto"
            else ("factorized" if factorized else "dense")
        )

    def set_cores(self, values) -> None:
        """Assign the cores' values, checking their shapes.

        Args:
            values: a list of arrays, one per core, shapes ``core_shapes(M)``.

        Raises:
            ValueError: when a value's shape differs from its core's.
        """
        for var, v in zip(self.cores, values):
            v = np.asarray(v)
            if tuple(v.shape) != tuple(var.shape):
                raise ValueError(f"{self._who}: core shape {tuple(var.shape)}, got {v.shape}.")
            var.assign(v.astype(var.dtype))

    def factorized_macs(self, in_features: int) -> int:
        """MACs per input row of the core contractions (the ``"factorized"`` path)."""
        ins, outs = self.modes(in_features)
        return _tt_contract_macs(ins, outs, self.tt_ranks(in_features))

    def full_kernel(self):
        """The ``(M, N)`` kernel as a tensor."""
        return _tt_rebuild(ops.ones((1, 1)), self.cores)[0]

    def call(self, inputs):
        m = int(inputs.shape[-1])
        if self._resolved_implementation == "dense":
            outputs = ops.matmul(inputs, self.full_kernel())
        else:
            lead = ops.shape(inputs)[:-1]
            z = _tt_contract(ops.reshape(inputs, (-1, m)), self.cores, self.modes(m)[0])
            outputs = ops.reshape(z, (*lead, self.units)) if len(lead) > 1 else z
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.units)

    def cost(self, input_shape) -> Cost:
        """Parameters and MACs of one call on ``input_shape``.

        MACs are those of the core contractions, or ``M*N`` per row where the dense path runs
        (the resolved ``implementation``; before build, the cheaper by MACs).

        Args:
            input_shape: ``(batch, ..., M)``; unknown inner axes count as 1.

        Returns:
            The layer's ``Cost``.

        Raises:
            ValueError: when ``input_shape`` is not a sequence of positive ints (``None``
                for unknown axes) ending in a known ``M``.
        """
        shape = _cost_input_shape(self._who, input_shape, spatial=False)
        m = shape[-1]
        rows = math.prod(d for d in shape[1:-1] if d is not None) if len(shape) > 2 else 1
        params = sum(math.prod(s) for s in self.core_shapes(m)) + (
            self.units if self.use_bias else 0
        )
        macs = self.factorized_macs(m)
        impl = self._resolved_implementation
        if impl == "dense" or (impl is None and m * self.units < macs):
            macs = m * self.units  # the path that runs (rebuild not counted, as for convs)
        return Cost(int(params), 0, int(rows * macs))

    # ---- from and to Dense ---------------------------------------------------------------

    @classmethod
    def rank_for(
        cls, kernel, rank=None, energy=None, in_modes="auto", out_modes="auto", num_modes=3
    ):
        """The inner TT-ranks that ``from_dense`` uses.

        From ``rank`` or ``energy`` (TT-SVD relative error bound ``sqrt(1 - energy)``); with
        neither, the full ranks.

        Args:
            kernel: the ``Dense`` kernel ``(M, N)``.
            rank: an int, ``d-1`` ints, or ``None``.
            energy: the share of the kernel's squared Frobenius norm to keep, in ``(0, 1]``,
                or ``None``.
            in_modes: ``"auto"`` or a factorization of ``M``.
            out_modes: ``"auto"`` or a factorization of ``N``.
            num_modes: the number of modes for ``"auto"``.

        Returns:
            An int (one cap for every bond) or a tuple ``(r_1, ..., r_{d-1})`` (1 when
            ``d = 1``).

        Raises:
            ValueError: when both ``rank`` and ``energy`` are given, or an argument is
                invalid.
        """
        name = cls.__name__
        check_rank_or_energy(name, rank, energy)
        w = np.asarray(kernel, dtype=np.float64)
        d = _num_modes(name, num_modes, in_modes, out_modes)
        ins = resolve_modes(w.shape[0], in_modes, d, name, "in_modes")
        outs = resolve_modes(w.shape[1], out_modes, d, name, "out_modes")
        full = dec.tt_matrix_max_ranks(ins, outs)
        if energy is not None:
            eps = math.sqrt(max(0.0, 1.0 - check_energy(name, energy)))
            cores = dec.tt_matrix_factors(w, ins, outs, eps=eps)
            return tuple(g.shape[-1] for g in cores[:-1]) or 1
        if rank is None:
            return tuple(full) or 1
        r = _rank_arg(name, rank, d - 1, pad_ones=2)
        return r

    @classmethod
    def from_dense(
        cls,
        dense,
        rank=None,
        energy=None,
        in_modes="auto",
        out_modes="auto",
        num_modes: int = 3,
        implementation: str = "auto",
        name: str | None = None,
    ):
        """Build a ``TTDense`` from a built ``keras.layers.Dense`` by TT-SVD of its kernel.

        Exact at the full TT-ranks (``rank=None``); the bias, activation, initializers,
        regularizers and constraints come along; ``dense`` is not modified.

        Args:
            dense: a built ``keras.layers.Dense`` with trained, finite weights.
            rank: an int, ``d-1`` ints, or ``None`` (the full ranks).
            energy: the share of the kernel's squared Frobenius norm to keep, in ``(0, 1]``,
                or ``None``.
            in_modes: ``"auto"`` or a factorization of the input features ``M``.
            out_modes: ``"auto"`` or a factorization of ``units``.
            num_modes: the number of modes for ``"auto"``.
            implementation: ``"auto"``, ``"factorized"`` or ``"dense"``.
            name: the layer's name (default: the source's).

        Returns:
            The new, built ``TTDense``.

        Raises:
            ValueError: when ``dense`` is not a valid source or an argument is invalid.
        """
        w = check_source(dense, keras.layers.Dense, f"{cls.__name__}.from_dense")
        r = cls.rank_for(w, rank, energy, in_modes, out_modes, num_modes)
        d = _num_modes(cls.__name__, num_modes, in_modes, out_modes)
        ins = resolve_modes(w.shape[0], in_modes, d, cls.__name__, "in_modes")
        outs = resolve_modes(w.shape[1], out_modes, d, cls.__name__, "out_modes")
        layer = cls(
            units=dense.units,
            rank=r,
            in_modes=in_modes,
            out_modes=out_modes,
            num_modes=d,
            implementation=implementation,
            **copied_layer_args(dense, name),
        )
        layer.build((None, w.shape[0]))
        caps = _bond_ranks(r, dec.tt_matrix_max_ranks(ins, outs))
        cores = dec.tt_matrix_factors(w, ins, outs, ranks=caps or None)
        layer.set_cores(_pad_cores(cores, [1, *caps, 1]))
        if dense.use_bias:
            layer.bias.assign(ops.convert_to_numpy(dense.bias))
        return layer

    def folded_kernel_and_bias(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The equivalent kernel and bias as NumPy arrays.

        Returns:
            A tuple ``(kernel (M, N), bias (N,) or None)``.
        """
        kernel = np.asarray(ops.convert_to_numpy(self.full_kernel()))
        bias = ops.convert_to_numpy(self.bias) if self.use_bias else None
        return kernel, bias

    def to_dense(self, name: str | None = None) -> keras.layers.Dense:
        """The equivalent, built ``keras.layers.Dense`` (the cores folded into one kernel).

        Args:
            name: the new layer's name; ``None`` keeps this layer's.

        Returns:
            A built ``keras.layers.Dense`` with this layer's activation, bias, initializers,
            regularizers and constraints.

        Raises:
            ValueError: when the layer is not built.
        """
        if not self.built:
            raise ValueError(f"{self._who}.to_dense: build the layer first.")
        kernel, bias = self.folded_kernel_and_bias()
        dense = keras.layers.Dense(
            self.units,
            activation=self.activation,
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            kernel_constraint=self.kernel_constraint,
            bias_constraint=self.bias_constraint,
            name=name or self.name,
            dtype=self.dtype_policy,
        )
        dense.build((None, kernel.shape[0]))
        dense.kernel.assign(kernel)
        if bias is not None:
            dense.bias.assign(bias)
        return dense

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "rank": list(self.rank) if isinstance(self.rank, tuple) else self.rank,
                "in_modes": self.in_modes
                if isinstance(self.in_modes, str)
                else list(self.in_modes),
                "out_modes": self._out_modes_arg
                if isinstance(self._out_modes_arg, str)
                else list(self._out_modes_arg),
                "num_modes": self.num_modes,
            }
        )
        config.update(weights_config(self))
        return config
