"""The conversion report: per layer what ``convert`` did, and the model totals.

``ConversionReport`` prints as a text table (``str``), a Markdown table (``to_markdown``) and a
dict (``to_dict``, JSON-ready). ``Progress`` is the one-line progress bar ``convert`` shows.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .._table import markdown_table, text_table
from ..cost import Cost

__all__ = ["ConversionReport", "LayerReport", "Progress"]


@dataclass
class LayerReport:
    """One conv/dense layer: what was done to it and what it costs before and after.

    Attributes:
        name: The layer's path in the model (``outer/inner`` for nested models).
        type: The layer's class name.
        method: The name of the method applied to it, or None.
        rank: The rank of the replacement (a list for multi-rank methods), or None.
        params_before: The layer's parameters (trainable and not) before conversion.
        params_after: Its parameters after conversion.
        macs_before: Its MACs before conversion, None when the input size is unknown.
        macs_after: Its MACs after conversion, None when the input size is unknown.
        relative_error: The kernel's relative Frobenius error ``||W - W_r|| / ||W||``, for
            a replaced layer.
        replaced: Whether the layer was replaced.
        reason: Why the layer was kept, when it was.
        implementation: The resolved implementation of the replacement.
        objective: What the replacement was fitted to: ``"kernel"`` (the kernel's error),
            ``"data"`` (the response error on calibration data), plus ``"+refit"`` (its
            last linear map and bias refitted to the original network's responses, given
            the converted network's inputs) or ``"+bias"`` (bias corrected for the mean
            output shift).
        output_error: With calibration data: the measured relative L2 error of the layer's
            output in the converted network against the original network's, on held-out
            calibration batches.
    """

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
    objective: str | None = None
    output_error: float | None = None


@dataclass
class ConversionReport:
    """Per-layer results and model totals of a ``convert`` call.

    It prints as a text table (``str``), a Markdown table (``to_markdown``) and a dict
    (``to_dict``, JSON-ready). The ``relative_error`` of each replaced layer is the kernel's
    relative Frobenius error ``||W - W_r|| / ||W||``.

    Attributes:
        method: The method's name, or ``"per layer"`` when it was chosen per layer.
        selection: How the ranks were chosen, in words (e.g. ``"energy=0.9"``).
        layers: One ``LayerReport`` per conv/dense layer considered.
        total_before: The ``model_cost`` total of the whole original model. When the
            input size is unknown its MACs are not counted (0, ``macs_known`` False, and
            ``macs_ratio`` None).
        total_after: The ``model_cost`` total of the whole converted model.
        macs_known: Whether the model's input size is fixed, so MACs could be counted.
        seconds: The wall time of the conversion.
        budget_met: With a budget, whether the converted model meets it (``convert``
            raises when it does not, unless ``strict=False``); None without a budget.
        calibration: With calibration data: the samples used to fit and to measure, the
            steps done and their seconds, and the whole model's output agreement against
            the original on the held-out samples (``top1_agreement`` for class outputs,
            ``relative_error`` of the outputs).
        latency: With a latency budget: the plan (``keras_eigenconv.latency.LatencyPlan``:
            per layer the method, rank and seconds; the whole-model measurements); in
            ``to_dict`` and ``to_markdown`` too.
    """

    method: str
    selection: str
    layers: list[LayerReport] = field(default_factory=list)
    total_before: Cost = field(default_factory=Cost)
    total_after: Cost = field(default_factory=Cost)
    macs_known: bool = True
    seconds: float = 0.0
    budget_met: bool | None = None
    calibration: dict | None = None
    latency: object | None = None

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
            "budget_met": self.budget_met,
            "calibration": self.calibration,
            "latency": None if self.latency is None else self.latency.to_dict(),
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
        "output error",
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
                    "output error": r.output_error,
                    "note": (
                        " ".join(x for x in (r.implementation, r.objective) if x)
                        if r.replaced
                        else f"kept: {r.reason}"
                    ),
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
        if self.budget_met is False:
            lines.append(f"budget MISSED: {self.selection} (budget_met=False)")
        cal = self.calibration
        if cal:
            agree = cal.get("top1_agreement")
            lines.append(
                f"calibration: {cal['fit_samples']} samples to fit, {cal['heldout_samples']} "
                "held out; output vs original on held-out: "
                + (f"top-1 agreement {agree:.4f}, " if agree is not None else "")
                + f"relative error {cal['relative_error']:.4f}"
            )
        return lines

    def __str__(self) -> str:
        fmt = {"rel. error": ".4f", "output error": ".4f"}
        return "\n".join([text_table(self._rows(), self._COLUMNS, fmt), "", *self._summary()])

    def to_markdown(self) -> str:
        fmt = {"rel. error": ".4f", "output error": ".4f"}
        summary = "\n".join(f"- {line}" for line in self._summary())
        text = f"{summary}\n\n{markdown_table(self._rows(), self._COLUMNS, fmt)}\n"
        if self.latency is not None:
            text += f"\n### Latency plan\n\n{self.latency.to_markdown()}"
        return text


class Progress:
    """A one-line progress bar on stderr.

    Args:
        total: The number of steps.
        enabled: Whether to draw the bar (it is never drawn for 0 steps).
        stream: The stream to write to, ``sys.stderr`` when None.
        prefix: The step's name, written before the bar.
    """

    def __init__(self, total: int, enabled: bool, stream=None, prefix: str = "converting"):
        self.total, self.enabled, self.n = total, enabled and total > 0, 0
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.start = time.perf_counter()

    def step(self, label: str) -> None:
        self.n += 1
        if not self.enabled:
            return
        width = 30
        done = int(width * self.n / self.total)
        elapsed = time.perf_counter() - self.start
        self.stream.write(
            f"\r{self.prefix} [{'#' * done}{'.' * (width - done)}] {self.n}/{self.total} "
            f"{elapsed:5.1f}s {label[:40]:<40}"
        )
        if self.n == self.total:
            self.stream.write("\n")
        self.stream.flush()
