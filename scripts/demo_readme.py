"""Put the demo's table and summary plot into README.md, from one demo run's files.

The README's demo block sits between ``<!-- demo:start -->`` and ``<!-- demo:end -->``; this
script replaces it with ``DIR/results.md`` (the table, the ship line and the run's command,
machine and seed, as the demo wrote them) and an image link to ``DIR/summary.png``.
``scripts/check_readme.py`` then checks every row of the block against ``DIR/results.json``.

Usage (the README's figures come from one full run on a quiet machine)::

    .venv/bin/keras-eigenconv demo --out docs/demo
    .venv/bin/python scripts/demo_readme.py docs/demo
    .venv/bin/python scripts/check_readme.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- demo:start -->", "<!-- demo:end -->"


def block(folder: Path) -> str:
    """The README block of one demo run.

    Args:
        folder: The demo's output folder (``results.md``, ``summary.png``).

    Returns:
        The text between the markers, markers included.
    """
    md = (folder / "results.md").read_text(encoding="utf-8").strip()
    rel = (folder / "summary.png").resolve().relative_to(ROOT).as_posix()
    return f"{START}\n{md}\n\n![The demo's summary page]({rel})\n{END}"


def main(argv: list[str]) -> int:
    """Replace the README's demo block.

    Args:
        argv: ``[script, folder]`` (default folder ``docs/demo``).

    Returns:
        The exit status: 0, or 1 when the README has no demo block.
    """
    folder = Path(argv[1]) if len(argv) > 1 else ROOT / "docs" / "demo"
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"demo_readme: README.md has no {START} ... {END} block")
        return 1
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(head + block(folder) + tail, encoding="utf-8")
    print(f"demo_readme: README.md demo block now from {folder / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
