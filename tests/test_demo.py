"""The README's first command, `keras-eigenconv demo`: quiet, one table, a summary plot."""

import io
import json
import os
import re
import struct
import subprocess
import sys

import pytest

from keras_eigenconv.demo import Conversion, demo_plan, pareto_front, ship_choice

# a line TensorFlow, absl, CUDA, oneDNN, the TFLite converter or LiteRT writes
TF_LOG = re.compile(
    r"^[IWEF]\d{4} |absl::|oneDNN|cuInit|cudart|cuda_|fully_quantize|Statistics for quantized"
    r"|tensorflow/|WARNING:tensorflow|WARNING:absl|XNNPACK delegate|cpu_feature_guard",
    re.MULTILINE,
)


def _user_env(tmp_path):
    # a user's shell: no TF_CPP_MIN_LOG_LEVEL (conftest sets one for this process); a timing
    # cache of its own so the test neither reads nor writes ~/.cache
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["KERAS_EIGENCONV_TIMING_CACHE"] = str(tmp_path / "timings.json")
    return env


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return len(data), width, height


def test_quick_demo_as_a_user_runs_it(tmp_path):
    # one run (a subprocess, as a user types it) checked four ways; one test function so
    # that pytest-xdist never runs the demo twice
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "keras_eigenconv", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_user_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _no_tensorflow_log_line(proc)
    _table_and_ship_line(proc, out)
    _results_are_consistent(out)
    _summary_png(out)


def _no_tensorflow_log_line(proc):
    both = proc.stdout + proc.stderr
    found = TF_LOG.findall(both)
    assert not found, f"log lines leaked: {found[:5]}\n{both[:3000]}"
    # stderr holds only the demo's own progress (one line per step when not a terminal) and
    # the package's own warnings, one line each
    lines = proc.stderr.strip().splitlines()
    own = re.compile(r"\[demo \d+/\d+\] |keras-eigenconv: warning: ")
    assert lines and all(own.match(line) for line in lines), lines
    assert any("training the baseline" in line for line in lines)
    assert any("timing" in line and "LiteRT" in line for line in lines)


def _table_and_ship_line(proc, out):
    text = proc.stdout
    for header in ("variant", "MACs", "tflite KB", "int8 acc", "p10-p90 ms", "latency ratio"):
        assert header in text
    assert "on the 449 held-out images" in text
    assert re.search(r"^0\s+original\s", text, re.MULTILINE)
    assert re.search(r"^Ship #\d+ ", text, re.MULTILINE)
    assert str(out.resolve()) in text
    md = (out / "results.md").read_text()
    assert "| # | variant |" in md and "**Ship #" in md and "Command: `keras-eigenconv demo" in md


def _results_are_consistent(out):
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    variants = [r["variant"] for r in rows]
    assert variants[0] == "original"
    free = rows[variants.index("svd, MACs<=0.50, data-free")]
    aware = [r for r in rows if r["variant"] == "svd, MACs<=0.50, data-aware"]
    assert [r["fine-tuned"] for r in aware] == [0, 1]
    latency_rows = [r for r in rows if r["variant"].startswith("svd, latency<=0.85 int8")]
    # the latency-budget conversion is in the table, or the table says why not
    assert latency_rows or any("svd, latency<=0.85" in n for n in res["notes"])
    for r in [free, *aware]:
        assert 0.45 <= r["MAC ratio"] <= 0.51, r
        assert r["params"] < rows[0]["params"] and r["tflite KB"] < rows[0]["tflite KB"]
    # data-aware conversion keeps more accuracy than data-free at the same budget (measured
    # here: 0.947 against 0.566 on the 449 test images)
    assert aware[0]["int8 acc"] > free["int8 acc"] + 0.05
    for r in rows:
        # the int8 .tflite on the whole test split agrees with its Keras model
        assert abs(r["int8 acc"] - r["float acc"]) <= 0.05, r
        assert 0 < r["p10 ms"] <= r["latency ms"] <= r["p90 ms"], r
        assert (out / r["file"]).read_bytes()[4:8] == b"TFL3"
    assert rows[0]["latency ratio"] == 1.0
    # the ship line follows its rule: the fastest within one point of the original
    ok = [r for r in rows if r["int8 acc"] >= rows[0]["int8 acc"] - 0.01 - 1e-12]
    fastest = min(ok, key=lambda r: r["latency ms"])
    assert res["ship"]["index"] == rows.index(fastest)
    meta = res["meta"]
    assert meta["command"].startswith("keras-eigenconv demo --quick --out")
    assert meta["seed"] == 0 and meta["settings"]["test_images"] == 449
    assert meta["machine"]["cores"] >= 1 and meta["versions"]["tensorflow"]
    layers = res["conversions"][0]["layers"]
    assert [la["name"] for la in layers][:5] == ["conv0", "conv1", "conv2", "conv3", "conv4"]


def _summary_png(out):
    size, width, height = _png_size(out / "summary.png")
    assert size > 30_000 and width >= 1000 and height >= 700, (size, width, height)


def test_demo_rejects_a_bad_budget(tmp_path):
    for flag in ("--budget", "--latency-budget"):
        proc = subprocess.run(
            [sys.executable, "-m", "keras_eigenconv", "demo", flag, "1.5", "-o", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            env=_user_env(tmp_path),
        )
        assert proc.returncode == 1 and f"{flag} must be in (0, 1]" in proc.stderr
        assert not TF_LOG.search(proc.stderr), proc.stderr
        assert not (tmp_path / "results.json").exists()


def test_pareto_front_keeps_the_non_dominated_points():
    points = [(1.0, 0.99), (0.5, 0.98), (0.6, 0.90), (0.4, 0.50), (0.5, 0.97), (2.0, 0.99)]
    assert pareto_front(points) == [3, 1, 0]


def _row(name, acc, ms, p10=None, p90=None):
    return {
        "variant": name,
        "int8 acc": acc,
        "latency ms": ms,
        "p10 ms": p10 or ms * 0.9,
        "p90 ms": p90 or ms * 1.1,
        "latency ratio": ms / 1.0,
        "tflite KB": 10.0,
    }


def test_ship_choice_is_the_fastest_within_one_point():
    rows = [_row("original", 0.990, 1.0), _row("a", 0.985, 0.5), _row("b", 0.97, 0.3)]
    ship, reason = ship_choice(rows)
    assert ship["variant"] == "a" and "1 point" in reason and "0.50x" in reason
    # a faster variant just inside the tolerance wins; one just outside does not
    rows.append(_row("c", 0.980, 0.4))
    assert ship_choice(rows)[0]["variant"] == "c"
    assert ship_choice(rows, tolerance=0.005)[0]["variant"] == "a"
    # overlapping spreads are said
    rows = [_row("original", 0.99, 1.0, 0.8, 1.2), _row("a", 0.99, 0.9, 0.7, 1.1)]
    assert "overlap" in ship_choice(rows)[1]
    # nothing faster within the tolerance: ship the original
    rows = [_row("original", 0.99, 1.0), _row("a", 0.90, 0.5)]
    ship, reason = ship_choice(rows)
    assert ship["variant"] == "original" and "no variant" in reason


def test_demo_plan():
    full = demo_plan(("svd", "decef"), 0.5, 0.6)
    assert [c.label for c in full] == [
        "svd, MACs<=0.50, data-free",
        "svd, MACs<=0.50, data-aware",
        "decef, MACs<=0.50, data-aware",
        "svd, MACs<=0.30, data-aware",
        "auto, latency<=0.60 int8, data-aware",
    ]
    assert full[-1] == Conversion("auto", {"latency": 0.6}, True, True, "litert-int8")
    assert len({c.slug for c in full}) == len(full)
    quick = demo_plan(("svd",), 0.5, 0.6, quick=True)
    assert [c.slug for c in quick] == ["svd_macs50_free", "svd_macs50_data", "svd_latency60_data"]
    assert demo_plan(("svd",), 0.5, None, quick=True)[-1].method == "svd"
    for bad in (dict(budget=0.0), dict(budget=1.5), dict(latency_budget=2.0), dict(methods=())):
        with pytest.raises(ValueError):
            demo_plan(**{"methods": ("svd",), **bad})


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise():
    from keras_eigenconv.demo import _Progress

    for stream in (_Terminal(), io.StringIO()):
        bar = _Progress(2, stream, True)
        bar.step("training the baseline")
        bar.update("(epoch 1/3)")
        bar.done("accuracy 0.9")
        bar.step("timing in LiteRT")
        bar.done()
        text = stream.getvalue()
        if stream.isatty():  # redrawn in place, no new line, cleared at the end
            assert "\n" not in text and text.count("\r") >= 5
            assert "(epoch 1/3)" in text and "2/2" in text and text.endswith("\r")
        else:  # one line per finished step, no carriage returns
            lines = text.splitlines()
            assert "\r" not in text and len(lines) == 2, lines
            assert lines[0].startswith("[demo 1/2] training the baseline: accuracy 0.9 (")
            assert lines[1].startswith("[demo 2/2] timing in LiteRT (")
    quiet = io.StringIO()
    bar = _Progress(1, quiet, False)
    bar.step("x")
    bar.done()
    assert quiet.getvalue() == ""
