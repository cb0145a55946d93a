"""Check that the README's measured figures match the results files they come from.

Each claim below is a README snippet with ``{}`` placeholders and, for each placeholder, a
selector into a ``benchmarks/results/*.json`` file and a format. The script formats the
values from the JSON, fills the snippet and checks that the README contains it verbatim, so
changing a number in a results file without updating the README (or the reverse) fails.

Selector syntax: dot-separated keys; a list is indexed by ``[key=value,key=value]``, which
must match exactly one element (values compared as strings). A trailing ``:fmt`` is a Python
format spec (default ``.2f``).

Usage: ``python scripts/check_readme.py [README.md]``; exit status 1 on any mismatch.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

LAT = "latency_resnet50_224.json"
PARETO = "pareto.json"


def _claims() -> list[tuple[str, str, list[str]]]:
    claims: list[tuple[str, str, list[str]]] = []
    # ---- latency table (README "Measured speed")
    claims.append(
        (
            "| method | MAC ratio | fp32 latency ratio (original {} ms) | int8 latency ratio "
            "(original {} ms) |",
            LAT,
            [
                "rows[model=original,precision=fp32].latency_ms:.1f",
                "rows[model=original,precision=int8].latency_ms:.1f",
            ],
        )
    )
    for readme_name, name in [
        ("DeCEF", "DeCEF"),
        ("BasisConv", "BasisConv"),
        ("SVD", "SVD"),
        ("Tucker-2", "Tucker-2"),
        ("SSC (G=4)", "SSC"),
    ]:
        claims.append(
            (
                f"| {readme_name} | {{}} | {{}} | {{}}",
                LAT,
                [
                    f"rows[model={name},precision=fp32].mac_ratio:.3f",
                    f"rows[model={name},precision=fp32].latency_ratio:.2f",
                    f"rows[model={name},precision=int8].latency_ratio:.2f",
                ],
            )
        )
    # ---- pareto table (README "Effective-rank analysis and the accuracy-versus-cost study")
    claims.append(
        (
            "| baseline | 1.00 | {} | 1.00 |",
            PARETO,
            ["rows[method=baseline].accuracy:.3f"],
        )
    )
    for readme_name, name in [
        ("DeCEF", "decef"),
        ("BasisConv", "basis"),
        ("SVD", "svd"),
        ("SVD spatial", "svd_spatial"),
        ("Tucker-2", "tucker2"),
    ]:
        budgets = ("0.75", "0.5", "0.25")
        sel = [f"rows[method={name},budget={b}]" for b in budgets]
        claims.append(
            (
                f"| {readme_name} | {{}} / {{}} / {{}} | "
                "{} -> {} / {} -> {} / {} -> {} | {} / {} / {} |",
                PARETO,
                [s + ".mac_ratio:.2f" for s in sel]
                + [s + f".{k}:.3f" for s in sel for k in ("acc_before", "accuracy")]
                + [s + ".latency_ratio:.2f" for s in sel],
            )
        )
    # ---- conversion time (README "Whole models: convert")
    claims.append(
        (
            "ResNet50 `decef` {} s against {} s\nclone-only ({}x), `svd` {} s ({}x",
            "convert.json",
            [
                "rows[model=ResNet50,method=decef].convert_s:.2f",
                "rows[model=ResNet50,method=decef].clone_s:.2f",
                "rows[model=ResNet50,method=decef].ratio:.2f",
                "rows[model=ResNet50,method=svd].convert_s:.2f",
                "rows[model=ResNet50,method=svd].ratio:.2f",
            ],
        )
    )
    claims.append(
        (
            "MobileNetV2 {}x and\n{}x.",
            "convert.json",
            [
                "rows[model=MobileNetV2,method=decef].ratio:.2f",
                "rows[model=MobileNetV2,method=svd].ratio:.2f",
            ],
        )
    )
    return claims


def select(data, selector: str):
    """Return the value a selector names in a results file's parsed JSON.

    Args:
        data: The parsed JSON.
        selector: ``key.key[field=value,...].key`` (without the ``:fmt`` part).

    Returns:
        The selected value.

    Raises:
        KeyError: When a key is missing or a list filter does not match exactly one element.
    """
    node = data
    for part in re.findall(r"[^.\[\]]+|\[[^\]]*\]", selector):
        if part.startswith("["):
            conds = dict(c.split("=", 1) for c in part[1:-1].split(","))
            hits = [el for el in node if all(_same(el.get(k), v) for k, v in conds.items())]
            if len(hits) != 1:
                raise KeyError(f"{selector}: {part} matches {len(hits)} elements, not 1")
            node = hits[0]
        else:
            node = node[part]
    return node


def _same(value, text: str) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value) == float(text)
        except ValueError:
            return False
    return str(value) == text


def check(readme: str) -> list[str]:
    """Check every claim against its results file.

    Args:
        readme: The README's text.

    Returns:
        One message per failed claim (empty when all hold).
    """
    errors = []
    cache: dict[str, object] = {}
    for template, name, selectors in _claims():
        if name not in cache:
            cache[name] = json.loads((RESULTS / name).read_text())
        values = []
        for spec in selectors:
            sel, _, fmt = spec.partition(":")
            values.append(format(select(cache[name], sel), fmt or ".2f"))
        want = template.format(*values)
        if want not in readme:
            errors.append(f"README.md lacks (from benchmarks/results/{name}):\n    {want!r}")
    return errors


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else ROOT / "README.md"
    errors = check(path.read_text())
    for e in errors:
        print(e)
    n = len(_claims())
    print(f"check_readme: {n - len(errors)} of {n} claims match benchmarks/results/")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
