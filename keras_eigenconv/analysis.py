"""Effective-rank analysis of a model's conv filters (the observation DeCEF is built on).

For each ``Conv2D`` (in model order, nested models included) with kernel ``W (kh, kw, C, N)``:

- whole-filter ranks of ``W.reshape(kh*kw*C, N)`` (the BasisConv / SVD-channel rank): the
  smallest rank keeping 90/95/99 % of the squared Frobenius norm, and the Roy-Vetterli entropy
  rank ``exp(H(s / sum s))``; normalized by ``min(kh*kw*C, N)``;
- per-input-channel eigen-filter ranks (the DeCEF rank): energy pooled over channels at the
  same thresholds, and the mean over channels of the entropy rank of ``W[:, :, c, :]``;
  normalized by ``min(kh*kw, N)`` (not defined for 1x1 convs).

Depth is the index of the conv among the model's convs (0 = first), also given as a share of
the model's depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from . import decompositions as dec
from . import graph
from ._io import atomic_path, check_writable
from ._table import markdown_table, text_table

__all__ = ["MEASURES", "RankAnalysis", "analyze", "filter_ranks"]

THRESHOLDS = (0.9, 0.95, 0.99)
MEASURES = (
    [f"filter_energy{int(t * 100)}" for t in THRESHOLDS]
    + ["filter_entropy"]
    + [f"decef_energy{int(t * 100)}" for t in THRESHOLDS]
    + ["decef_entropy"]
)


def _convs(model):
    # graph.walk: nested models, and in subclassed models the layers held in attributes,
    # lists, dicts and nested blocks
    for path, layer in graph.walk(model):
        if isinstance(layer, keras.layers.Conv2D) and layer.groups == 1 and layer.built:
            yield path, layer


def filter_ranks(kernel) -> dict:
    """Compute every rank measure of one conv kernel, normalized to ``[0, 1]``.

    Whole-filter ranks are of ``W.reshape(kh*kw*C, N)``, normalized by
    ``min(kh*kw*C, N)``; per-input-channel (DeCEF) ranks are normalized by
    ``min(kh*kw, N)``. Energy ranks keep 90/95/99 % of the squared Frobenius norm; entropy
    ranks are Roy-Vetterli ``exp(H(s / sum s))``.

    Args:
        kernel: A ``(kh, kw, C, N)`` conv kernel.

    Returns:
        ``{measure: value}`` for every name in ``MEASURES``; the ``decef_*`` measures are
        None for a 1x1 kernel.
    """
    w = dec.as_float64_kernel(kernel)
    kh, kw, c, n = w.shape
    out = {}
    whole = dec.basis_spectrum(w)
    full = min(kh * kw * c, n)
    for t in THRESHOLDS:
        out[f"filter_energy{int(t * 100)}"] = dec.energy_rank(whole, t) / full
    out["filter_entropy"] = dec.entropy_rank(np.sqrt(whole)) / full
    if kh * kw > 1:
        per = dec.decef_spectrum(w)
        dfull = min(kh * kw, n)
        for t in THRESHOLDS:
            out[f"decef_energy{int(t * 100)}"] = dec.energy_rank(per, t) / dfull
        per_channel = np.transpose(w, (2, 0, 1, 3)).reshape(c, kh * kw, n)
        s = np.linalg.svd(per_channel, compute_uv=False)
        out["decef_entropy"] = float(np.mean([dec.entropy_rank(si) for si in s])) / dfull
    else:
        for m in MEASURES:
            if m.startswith("decef"):
                out[m] = None
    return out


@dataclass
class RankAnalysis:
    """Per-conv rank measures against depth.

    It prints as a text table (``str``), a Markdown table (``to_markdown``) and a dict
    (``to_dict``).

    Attributes:
        rows: One dict per conv: ``depth`` (its index among the model's convs, 0 = first),
            ``relative_depth`` (that index as a share of the model's depth), ``layer``
            (its path), ``kernel`` (its shape) and every measure of ``MEASURES``
            (``filter_ranks``).
    """

    rows: list[dict] = field(default_factory=list)

    columns = ("depth", "layer", "kernel", *MEASURES)

    def to_dict(self) -> dict:
        return {"measures": list(MEASURES), "layers": list(self.rows)}

    def __str__(self) -> str:
        return text_table(self.rows, self.columns, {m: ".2f" for m in MEASURES})

    def to_markdown(self) -> str:
        return markdown_table(self.rows, self.columns, {m: ".2f" for m in MEASURES})

    def mean(self, measure: str, spatial_only: bool = False) -> float:
        vals = [
            r[measure]
            for r in self.rows
            if r[measure] is not None and (not spatial_only or r["kernel"][0] * r["kernel"][1] > 1)
        ]
        return float(np.mean(vals)) if vals else float("nan")

    def depth_trend(self, measure: str = "filter_entropy") -> float:
        """Fit the slope of a measure against relative depth.

        Args:
            measure: A name in ``MEASURES``.

        Returns:
            The least-squares slope (negative: rank falls with depth); NaN with fewer than
            two values.
        """
        pts = [(r["relative_depth"], r[measure]) for r in self.rows if r[measure] is not None]
        if len(pts) < 2:
            return float("nan")
        x, y = np.array(pts).T
        return float(np.polyfit(x, y, 1)[0])

    def plot(self, path, title: str | None = None) -> None:
        """Write a PNG of each measure against depth.

        Args:
            path: The PNG file to write.
            title: The plot's title.

        Raises:
            ImportError: When matplotlib is not installed (the ``plot`` extra).
            OSError: When ``path`` cannot be written (written atomically: an existing
                file is then unchanged).
        """
        try:  # a Figure on the Agg canvas: no pyplot state, no global backend switch
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ImportError(
                "Plotting needs matplotlib: pip install 'keras-eigenconv[plot]'"
            ) from err
        fig = Figure(figsize=(9, 5))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        depth = [r["depth"] for r in self.rows]
        for m in MEASURES:
            ys = [np.nan if r[m] is None else r[m] for r in self.rows]
            if not np.all(np.isnan(ys)):
                ax.plot(depth, ys, marker=".", label=m)
        # integer ticks at the layers, named (every k-th one for deep models)
        step = max(1, len(depth) // 24)
        ax.set_xticks(
            depth[::step],
            [f"{r['depth']} {r['layer']}" for r in self.rows][::step],
            rotation=60,
            ha="right",
            fontsize=7,
        )
        ax.set_xlabel("conv layer (depth index and name)")
        ax.set_ylabel("effective rank / maximum rank (dimensionless)")
        ax.set_ylim(0, 1.05)
        ax.set_title(title or "Effective rank of conv filters against depth")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(path, what="plot") as tmp:  # no half-written PNG, ever
            fig.savefig(tmp, dpi=120, format=Path(path).suffix[1:].lower() or "png")


def analyze(model, plot=None, title: str | None = None) -> RankAnalysis:
    """Measure the effective ranks of a model's conv filters against depth.

    Every built, ungrouped ``Conv2D`` of ``model`` (in model order, nested models included;
    in a subclassed model, those held in its attributes, lists, dicts and nested blocks)
    gets the measures of ``filter_ranks``.

    Args:
        model: A Keras model.
        plot: A path; writes a PNG of rank against depth, one line per measure (needs
            matplotlib: the ``plot`` extra).
        title: The plot's title.

    Returns:
        The ``RankAnalysis``.

    Raises:
        ValueError: When ``model`` has no built ``Conv2D`` layer, or a kernel contains NaN
            or Inf.
        OSError: When ``plot`` cannot be written (checked first; the plot is written
            atomically).
    """
    if plot is not None:
        check_writable(plot, "plot")  # before the work, not after it
    convs = list(_convs(model))
    if not convs:
        raise ValueError(f"analyze: model '{model.name}' has no built Conv2D layer to analyze.")
    result = RankAnalysis()
    for i, (name, layer) in enumerate(convs):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        if not np.all(np.isfinite(kernel)):
            raise ValueError(f"analyze: the kernel of Conv2D '{name}' contains NaN or Inf.")
        row = {
            "depth": i,
            "relative_depth": i / max(len(convs) - 1, 1),
            "layer": name,
            "kernel": tuple(int(d) for d in kernel.shape),
        }
        row.update(filter_ranks(kernel))
        result.rows.append(row)
    if plot is not None:
        result.plot(plot, title=title)
    return result
