"""Plain-text and Markdown tables for the package's reports."""

from __future__ import annotations

from collections.abc import Sequence


def _cell(value, fmt: str | None) -> str:
    if value is None:
        return ""
    if fmt:
        return format(value, fmt)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def text_table(
    rows: Sequence[dict],
    columns: Sequence[str],
    formats: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """Aligned plain-text table of ``rows`` (dicts) over ``columns``; numbers right-aligned.
    ``headers`` renames columns in the header line."""
    formats = formats or {}
    titles = [(headers or {}).get(c, c) for c in columns]
    cells = [[_cell(r.get(c), formats.get(c)) for c in columns] for r in rows]
    widths = [max([len(t)] + [len(row[i]) for row in cells]) for i, t in enumerate(titles)]
    numeric = [
        all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) for c in columns
    ]

    def line(values):
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
        ).rstrip()

    return "\n".join([line(titles)] + [line(row) for row in cells])


def markdown_table(
    rows: Sequence[dict],
    columns: Sequence[str],
    formats: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """GitHub Markdown table of ``rows`` over ``columns`` (``headers`` renames columns)."""
    formats = formats or {}
    numeric = [
        all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) for c in columns
    ]
    out = ["| " + " | ".join((headers or {}).get(c, c) for c in columns) + " |"]
    out.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    for r in rows:
        out.append("| " + " | ".join(_cell(r.get(c), formats.get(c)) for c in columns) + " |")
    return "\n".join(out)
