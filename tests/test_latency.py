"""Latency budgets: convert(budget={"latency": x}, target=...) plans with LiteRT timings."""

import dataclasses
import json
import re
import time

import keras
import numpy as np
import pytest

import keras_eigenconv as ke
from keras_eigenconv.compress.registry import get_method
from keras_eigenconv.deploy import CostModel, LiteRTTimer
from keras_eigenconv.latency import TARGETS, Target, latency_ranks, parse_target
from keras_eigenconv.training.implementations import training_path_variants


@pytest.fixture(autouse=True)
def _timing_cache(tmp_path, monkeypatch):
    path = tmp_path / "timings.json"
    monkeypatch.setenv("KERAS_EIGENCONV_TIMING_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """A timing cache shared by the tests that time the same candidates."""
    return tmp_path_factory.mktemp("latency") / "timings.json"


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    x = keras.Input((24, 24, 16))
    y = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    y = keras.layers.Conv2D(96, 3, padding="same", activation="relu")(y)
    y = keras.layers.Conv2D(96, 3, padding="same")(y)
    return keras.Model(x, y)


class Sleeper:
    """An "interpreter" whose ``invoke`` sleeps a fixed time (for the timing helpers)."""

    def __init__(self, s):
        self.s = s

    def invoke(self):
        time.sleep(self.s)


def test_target_record_and_shorthands():
    assert parse_target("litert-int8") == Target("litert", "int8", 2, 1)
    assert parse_target("litert-fp16").quantize == "float16"
    assert parse_target("litert-fp32").quantize is None
    assert parse_target("train").runtime == "train"
    assert set(TARGETS) == {"litert-fp32", "litert-fp16", "litert-int8", "train"}
    t = Target(precision="int8", threads=4)
    assert parse_target(t) is t
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.threads = 1
    for bad in (
        {"runtime": "tflite"},
        {"precision": "int4"},
        {"threads": 0},
        {"threads": True},
        {"batch": 8},  # LiteRT is timed at batch 1
    ):
        with pytest.raises(ValueError, match="Target"):
            Target(**bad)
    with pytest.raises(ValueError, match="litert-int8"):
        parse_target("int8")


def test_latency_ranks_are_hardware_friendly():
    assert latency_ranks(512) == [32, 64, 128, 192, 256, 384]
    assert all(r % 8 == 0 for r in latency_ranks(96))
    assert latency_ranks(4) == [1, 2, 3] or all(r < 4 for r in latency_ranks(4))
    assert len(latency_ranks(512, 3)) == 3


def test_bad_latency_arguments_fail_before_any_timing(model, _timing_cache):
    with pytest.raises(ValueError, match="target"):
        ke.convert(model, method="svd", budget={"macs": 0.5}, target="litert-int8")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ke.convert(model, method="svd", budget={"latency": 1.5})
    with pytest.raises(ValueError, match="rank="):
        ke.convert(model, method="svd", budget={"latency": 0.5}, rank=4)
    with pytest.raises(ValueError, match="timing='measure'"):
        ke.convert(model, method="svd", budget={"latency": 0.5}, target="train", timing="predict")
    with pytest.raises(ValueError, match="chooses its own ranks.*'tucker2'"):
        ke.convert(model, method="cp", budget={"latency": 0.5})
    assert not _timing_cache.exists()


def test_latency_budget_is_met_and_changes_the_plan(model, shared_cache):
    x = np.random.default_rng(0).normal(size=(2, 24, 24, 16)).astype("float32")
    loose, rep_loose = ke.convert(
        model, method="svd", budget={"latency": 1.0}, ranks_per_layer=3, cache_path=shared_cache
    )
    plan = rep_loose.latency
    assert all(p.method is None for p in plan.layers)  # nothing needs to change
    np.testing.assert_allclose(loose(x), model(x), rtol=1e-5, atol=1e-5)

    new, rep = ke.convert(
        model,
        method="svd",
        budget={"latency": 0.75},
        ranks_per_layer=3,
        strict=False,
        cache_path=shared_cache,
        feedback_rounds=0,  # the planner alone: its per-layer sum meets the budget
    )
    plan = rep.latency
    assert rep.budget_met and plan.met and plan.measured is None and not plan.feedback
    assert plan.measured_plan_s <= 0.75 * plan.original_s * (1 + 1e-9)
    replaced = [p for p in plan.layers if p.method is not None]
    assert replaced and all(p.method == "svd" and p.rank % 8 == 0 for p in replaced)
    for p in replaced:  # the built model follows the plan
        row = next(r for r in rep.layers if r.name == p.name)
        assert row.replaced and row.rank == p.rank
    assert rep.total_after.macs < rep.total_before.macs
    # every timing went to the cache, keyed with the precision and the threads
    keys = [json.loads(k) for k in json.loads(shared_cache.read_text())["entries"]]
    assert keys and all(k["quantize"] is None and k["threads"] == 2 for k in keys)
    assert "| layer | method | rank |" in plan.to_markdown()


def test_tucker2_takes_a_latency_budget_and_auto_offers_it(model, shared_cache):
    # Tucker-2 chooses rank pairs; a latency plan offers it at R1 = R2 = r with its
    # int-rank spectrum as the error (as MAC budgets do)
    new, rep = ke.convert(
        model,
        method="tucker2",
        budget={"latency": 0.8},
        ranks_per_layer=2,
        strict=False,
        cache_path=shared_cache,
        feedback_rounds=0,
    )
    replaced = [p for p in rep.latency.layers if p.method is not None]
    assert replaced and {p.method for p in replaced} == {"tucker2"}
    for p in replaced:
        layer = new.get_layer(p.name)
        assert type(layer).__name__ == "Tucker2Conv2D" and layer.ranks == (p.rank, p.rank)
    assert rep.budget_met == rep.latency.met
    from keras_eigenconv.compress.registry import available_methods, get_method
    from keras_eigenconv.latency import _budgetable

    offered = [n for n in available_methods() if _budgetable(get_method(n))]
    assert "tucker2" in offered and "cp" not in offered and "svd" in offered


def test_no_eligible_layer_is_refused_before_timing(_timing_cache):
    inp = keras.Input((16, 16, 8))
    y = keras.layers.Conv2D(8, 3, padding="same")(inp)  # the first conv: skipped
    y = keras.layers.Conv2D(16, 1)(y)  # 1x1: not for the spatial-only decef
    net = keras.Model(inp, y)
    with pytest.raises(ValueError, match="no layer of model .* can be replaced by decef"):
        ke.convert(net, method="decef", budget={"latency": 0.7})
    assert not _timing_cache.exists()  # refused before anything was timed


def test_impossible_latency_budget_raises(model, shared_cache):
    with pytest.raises(ValueError, match="cannot be met"):
        ke.convert(
            model,
            method="svd",
            budget={"latency": 0.01},
            ranks_per_layer=3,
            cache_path=shared_cache,
        )


def test_predict_mode_times_the_plan_only(model, _timing_cache):
    timer_entries = lambda: len(LiteRTTimer(_timing_cache).entries)  # noqa: E731
    _, rep = ke.convert(
        model,
        method="svd",
        budget={"latency": 0.7},
        target=Target(precision="fp32"),
        timing="predict",
        ranks_per_layer=4,
        strict=False,
        feedback_rounds=0,
    )
    plan = rep.latency
    assert plan.timing == "predict"
    for p in plan.layers:  # every chosen candidate was timed to confirm
        assert p.measured_s is not None and p.measured_s > 0
    assert plan.met == (plan.measured_plan_s <= 0.7 * plan.original_s * (1 + 1e-9))
    # only originals and chosen candidates were timed: fewer than all offers
    offered = sum(p.candidates for p in plan.layers)
    assert timer_entries() < offered + len(plan.layers)


def test_cost_model_fits_one_precision(_timing_cache):
    entries = {}
    for q, scale in ((None, 1e-9), ("int8", 5e-10)):
        for i in range(14):
            key = json.dumps({"ops": [i], "quantize": q, "threads": 2})
            macs = 1e5 * (i + 1)
            entries[key] = {
                "seconds": scale * macs + 1e-6,
                "features": {"conv": macs, "ops": 1.0},
            }
    _timing_cache.write_text(json.dumps({"version": 1, "entries": entries}))
    fp32 = CostModel.from_cache(_timing_cache, quantize=None, num_threads=2)
    int8 = CostModel.from_cache(_timing_cache, quantize="int8", num_threads=2)
    assert fp32.coef["conv"] == pytest.approx(1e-9, rel=1e-3)
    assert int8.coef["conv"] == pytest.approx(5e-10, rel=1e-3)
    assert CostModel.from_cache(_timing_cache, quantize=None, num_threads=4) is (
        ke.deploy.DEFAULT_COST_MODEL
    )


@pytest.mark.slow
def test_auto_int8_mixes_methods_within_the_budget(model):
    from keras_eigenconv.compress import get_method
    from keras_eigenconv.latency import _budgetable

    # how far int8 factorization pays depends on the CPU's integer kernels (on one with
    # AMX the fastest plan of this model was 0.75 of the original): the budget is set
    # between the plan's floor (measured by a first call) and 1
    kw = dict(method="auto", target="litert-int8", ranks_per_layer=2, feedback_rounds=0)
    _, first = ke.convert(model, budget={"latency": 0.99}, **kw)
    floor = first.latency.floor
    assert 0 < floor < 1
    x = round(min(0.97, floor + 0.5 * (1 - floor)), 3)
    _, rep = ke.convert(model, budget={"latency": x}, **kw)  # the layers' timings cached
    plan = rep.latency
    assert rep.budget_met and plan.met and plan.target.quantize == "int8"
    chosen = {p.method for p in plan.layers if p.method is not None}
    assert chosen and all(_budgetable(get_method(m)) for m in chosen)
    # auto offers every method a latency budget takes, so more candidates than one alone
    assert all(p.candidates > 2 for p in plan.layers)


def test_next_share_interpolates_the_measured_points():
    from keras_eigenconv.latency import _next_share

    # planned at 0.7, measured 0.85: the line through (1, 1) and (0.7, 0.85) hits 0.68
    # at share 1 - 0.32 * 0.3 / 0.15 = 0.36
    assert _next_share([(0.7, 0.85)], 0.68, 0.1) == pytest.approx(0.36)
    # bracketed by two measurements: interpolate between them, not through (1, 1)
    assert _next_share([(0.7, 0.85), (0.4, 0.55)], 0.7, 0.1) == pytest.approx(0.55)
    # never below the fastest plan, never above the original
    assert _next_share([(0.7, 0.95)], 0.5, 0.3) == pytest.approx(0.3 * (1 + 1e-6))
    assert _next_share([(0.7, 0.3)], 0.68, 0.1) <= 1.0
    # measured slower than the original at a lower share: the per-layer timings are off,
    # so the next try is the fastest plan, not an extrapolation back towards the original
    assert _next_share([(0.6, 1.2)], 0.58, 0.3) == pytest.approx(0.3 * (1 + 1e-6))


def test_paired_ratio_times_interleaved_rounds():
    from keras_eigenconv.latency import paired_ratio

    got = paired_ratio(Sleeper(0.005), Sleeper(0.015), rounds=5)
    # 3x the sleep; a loaded machine oversleeps both by the same few ms, pulling it to 2
    assert 1.8 < got["ratio"] < 3.3
    assert got["p10"] <= got["ratio"] <= got["p90"]
    assert got["candidate_s"] > got["original_s"] >= 0.005
    assert got["rounds"] in (5, 10, 15)  # more rounds only while the spread is wide


def test_feedback_measures_the_whole_model_and_keeps_the_best(model, shared_cache, capsys):
    x = 0.6
    new, rep = ke.convert(
        model,
        method="svd",
        budget={"latency": x},
        ranks_per_layer=3,
        strict=False,
        cache_path=shared_cache,
        feedback_rounds=3,
        progress=True,
    )
    plan = rep.latency
    err = capsys.readouterr().err  # the steps, named, on stderr
    # the per-layer timings: a progress bar, or (kept by an earlier test's call on this
    # model and cache) a line saying so
    assert "timing on litert-fp32 (2 threads)" in err and "measured 1/3: the whole" in err
    assert 1 <= len(plan.feedback) <= 3
    for f in plan.feedback:
        assert set(f) >= {"share", "planned_ratio", "ratio", "p10", "p90"}
        assert f["p10"] <= f["ratio"] <= f["p90"] and f["ratio"] > 0
    # the first plan is at the budget itself (or, when the per-layer sum says the budget
    # is out of reach, at the fastest offered plan, measured before refusing)
    assert plan.feedback[0]["share"] >= x
    # the returned plan is the measured one closest to the budget from below (or the
    # fastest measured one when none met it), and it is the one that was built
    under = [f for f in plan.feedback if f["ratio"] <= x]
    want = (
        max(under, key=lambda f: f["ratio"])
        if under
        else min(plan.feedback, key=lambda f: f["ratio"])
    )
    assert plan.share == want["share"] == plan.measured["share"]
    assert plan.measured["rounds"] > want["rounds"] and plan.measured.get("confirmed")
    assert rep.budget_met == plan.met == (plan.measured["ratio"] <= x)
    assert plan.measured_ratio == plan.measured["ratio"]
    for p in plan.layers:
        row = next(r for r in rep.layers if r.name == p.name)
        assert row.replaced == (p.method is not None)
        if p.method is not None:
            assert row.rank == p.rank
    assert "whole model measured" in plan.to_markdown()
    # the conversion report carries the plan: Markdown and JSON-ready dict
    assert "### Latency plan" in rep.to_markdown() and "whole model measured" in rep.to_markdown()
    assert json.loads(json.dumps(rep.to_dict()))["latency"]["measured_ratio"] == plan.measured_ratio
    with pytest.raises(ValueError, match="feedback_rounds"):
        ke.convert(model, method="svd", budget={"latency": x}, feedback_rounds=-1)


def test_train_step_timer_caches_training_steps(tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("training steps are timed in TensorFlow")
    from keras_eigenconv.deploy import TrainStepTimer

    path = tmp_path / "train.json"
    timer = TrainStepTimer(path, batch=4, rounds=3)
    conv = keras.layers.Conv2D(16, 3, padding="same")
    svd = ke.SVDConv2D(16, 3, rank=4, padding="same")
    got = timer.time({"conv": [conv], "svd": [svd]}, (None, 12, 12, 8))
    assert set(got) == {"conv", "svd"} and all(0 < s < 1 for s in got.values())
    assert timer.measured == 2
    again = TrainStepTimer(path, batch=4, rounds=3)  # from the file, nothing timed
    assert again.time({"c": [conv]}, (1, 12, 12, 8)) == {"c": got["conv"]}
    assert again.measured == 0
    keys = [json.loads(k) for k in json.loads(path.read_text())["entries"]]
    assert {(k["runtime"], k["batch"], tuple(k["input"])) for k in keys} == {
        ("tensorflow-train", 4, (12, 12, 8))
    }
    assert TrainStepTimer(path, batch=8).key([conv], (None, 12, 12, 8)) != timer.key(
        [conv], (None, 12, 12, 8)
    )
    with pytest.raises(ValueError, match="batch"):
        TrainStepTimer(path, batch=0)


def test_train_step_runs_fit_steps_on_a_copy(model):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("training steps are timed in TensorFlow")
    from keras_eigenconv.deploy import TrainStep

    before = [w.copy() for w in model.get_weights()]
    step = TrainStep(model, batch=2)
    step.invoke()
    step.invoke()
    assert step.model is not model
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert step.model.optimizer.iterations.numpy() == 2  # two optimizer updates ran


@pytest.mark.filterwarnings("ignore:convert. the latency budget")
def test_train_target_plans_with_training_step_times(model, tmp_path, _timing_cache):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("training steps are timed in TensorFlow")
    from keras_eigenconv.deploy import TrainStepTimer

    path = tmp_path / "train.json"
    target = Target("train", batch=4)
    new, rep = ke.convert(
        model,
        method="svd",
        budget={"latency": 0.7},
        target=target,
        ranks_per_layer=2,
        feedback_rounds=1,
        strict=False,
        cache_path=path,
    )
    plan = rep.latency
    assert plan.target == target and str(plan.target) == "train (batch 4)"
    assert len(plan.layers) == 2  # the first conv is skipped
    assert len(plan.feedback) == 1 and plan.feedback[0]["ratio"] > 0
    # met is judged on the confirmed measurement (the first one's rounds and as many again)
    assert plan.measured["confirmed"] and plan.measured["rounds"] > plan.feedback[0]["rounds"]
    assert rep.budget_met == (plan.measured["ratio"] <= 0.7)
    # every timing is a training step of the layer alone at batch 4, from the train cache;
    # nothing went through LiteRT
    assert not _timing_cache.exists()
    timer = TrainStepTimer(path, batch=4)
    by_name = {la.name: la for la in model.layers}
    for p in plan.layers:
        layer = by_name[p.name.split("/")[-1]]
        shape = tuple(layer.input.shape)
        assert p.original_s == timer.time({"o": [layer]}, shape)["o"]
        if p.method is not None:
            # the plan counted the faster training path of the layer it built (same
            # activation, same cache entries), and the built layer trains that way
            built = new.get_layer(layer.name)
            assert isinstance(built, ke.SVDConv2D) and built.rank == p.rank
            paths = {t: [v] for t, v in training_path_variants(built).items()}
            got = timer.time(paths, shape)
            assert p.predicted_s == min(got.values())
            assert built.training_implementation == min(
                got, key=lambda t: (got[t], t != "dense")
            )
            assert built.resolved_training_implementation == built.training_implementation
    assert any(p.method is not None for p in plan.layers)
    assert timer.measured == 0
    new.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(4, 24, 24, 16)).astype("float32")
    new.fit(x, np.zeros((4, 24, 24, 96), "float32"), epochs=1, verbose=0)


def test_a_budget_below_the_planned_floor_is_measured_before_it_is_refused(model, shared_cache):
    # the plan's floor (every layer at its fastest offered rank, per-layer sums)
    _, rep = ke.convert(
        model,
        method="svd",
        budget={"latency": 1.0},
        ranks_per_layer=3,
        cache_path=shared_cache,
        feedback_rounds=0,
    )
    floor = rep.latency.floor
    assert 0.1 < floor <= 1.0, floor
    # just below the floor, the allocator refuses; the answer must come from measuring the
    # fastest plan as a whole (the per-layer sums can be off either way), not from the plan
    x = round(0.9 * floor, 3)
    try:
        _, rep = ke.convert(
            model,
            method="svd",
            budget={"latency": x},
            ranks_per_layer=3,
            cache_path=shared_cache,
            feedback_rounds=2,
            strict=False,
        )
    except ValueError as err:
        measured = re.search(r"the fastest offered plan measured (\d\.\d+)", str(err))
        assert measured and float(measured.group(1)) > x, str(err)
    else:  # measured as a whole model, and the report says whether that met the budget
        assert rep.latency.feedback and rep.budget_met == (rep.latency.measured_ratio <= x)
    # far below the floor (the floor moves with the machine's load: 0.05 stays far below
    # it), it is refused up front, naming the plan's floor
    with pytest.raises(ValueError, match="fastest offered rank the model takes"):
        ke.convert(
            model,
            method="svd",
            budget={"latency": 0.05},
            ranks_per_layer=3,
            cache_path=shared_cache,
            feedback_rounds=2,
        )


def test_cli_convert_to_a_latency_budget(model, shared_cache, tmp_path, monkeypatch, capsys):
    from keras_eigenconv.cli.main import main as cli_main

    monkeypatch.setenv("KERAS_EIGENCONV_TIMING_CACHE", str(shared_cache))
    src = tmp_path / "m.keras"
    model.save(src)
    out_json = tmp_path / "r.json"
    code = cli_main(
        [
            "convert", str(src), "--method", "svd", "--budget-latency", "0.8",
            "--target", "litert-fp32", "--feedback-rounds", "1", "--no-strict",
            "--no-progress", "--json", str(out_json), "-o", str(tmp_path / "new.keras"),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| layer | method | rank |" in printed and "whole model measured" in printed
    got = json.loads(out_json.read_text())
    assert got["latency"]["budget"] == 0.8 and len(got["latency"]["feedback"]) == 1
    assert got["latency"]["target"].startswith("litert-fp32")
    new = keras.models.load_model(tmp_path / "new.keras")
    replaced = {p["name"] for p in got["latency"]["layers"] if p["method"]}
    assert {lay.name for lay in new.layers if type(lay).__name__ == "SVDConv2D"} == replaced
    # wrong combinations fail before the model is loaded or timed
    for argv, msg in (
        (["--method", "auto"], "needs --budget-latency"),
        (["--method", "svd", "--target", "litert-int8"], "--target is used with"),
        (["--method", "svd", "--budget-latency", "1.5"], "(0, 1]"),
    ):
        assert cli_main(["convert", str(tmp_path / "missing.keras"), *argv]) == 1
        assert msg in capsys.readouterr().err


def test_a_repeated_conversion_reuses_the_whole_model_measurements(model, tmp_path, monkeypatch):
    """A second identical call on the same architecture and target exports and times no
    model (counted: interpreters made, interleaved timings run) and replays the first
    call's measurements: the same plan, feedback and model."""
    from keras_eigenconv import latency

    calls = []
    for name in ("_interpreter", "_paired_samples", "time_interleaved"):
        real = getattr(latency, name)
        monkeypatch.setattr(
            latency, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k)
        )
    path = tmp_path / "timings.json"
    kw = dict(
        method="svd",
        budget={"latency": 0.7},
        ranks_per_layer=3,
        feedback_rounds=2,
        strict=False,
        cache_path=path,
        progress=False,
    )
    new1, rep1 = ke.convert(model, **kw)
    p1 = rep1.latency
    assert p1.reused == 0 and p1.model_timings >= 2  # the original, then each plan
    assert "_interpreter" in calls and "_paired_samples" in calls
    assert (tmp_path / "timings.models.json").is_file()
    calls.clear()
    new2, rep2 = ke.convert(model, **kw)
    p2 = rep2.latency
    assert calls == []  # no model exported, nothing timed
    # reused: the table, then each distinct measured plan (two feedback rounds may land on
    # the same plan, kept once)
    assert p2.model_timings == 0 and p2.timed == 0 and 2 <= p2.reused <= 1 + len(p1.feedback)
    assert [(q.name, q.method, q.rank) for q in p2.layers] == [
        (q.name, q.method, q.rank) for q in p1.layers
    ]
    assert p2.feedback == p1.feedback and p2.measured == p1.measured and p2.model_s == p1.model_s
    for a, b in zip(new1.weights, new2.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # same architecture, other weights: the timings do not depend on the values (the
    # per-layer table and the original's seconds are reused; new plans are measured)
    other = keras.Model.from_config(model.get_config())  # e.g. the model reloaded
    other.set_weights([w * 2.0 + 0.5 for w in model.get_weights()])
    calls.clear()
    _, rep3 = ke.convert(other, **kw)
    assert rep3.latency.reused >= 1 and "time_interleaved" not in calls
    # another architecture (another input size): nothing is reused
    x = keras.Input((20, 20, 16))
    y = x
    for layer in model.layers[1:]:
        y = layer.__class__.from_config(layer.get_config())(y)
    smaller = keras.Model(x, y)
    _, rep4 = ke.convert(smaller, **{**kw, "feedback_rounds": 1})
    assert rep4.latency.reused == 0 and rep4.latency.model_timings >= 1


def test_kept_measurements_that_are_not_whole_are_measured_again(model, tmp_path):
    """A plan entry of the models file missing its rounds (edited by hand) is measured
    again, not trusted and not a crash."""
    path = tmp_path / "timings.json"
    kw = dict(
        method="svd",
        budget={"latency": 0.7},
        ranks_per_layer=3,
        feedback_rounds=1,
        strict=False,
        cache_path=path,
        progress=False,
    )
    _, rep1 = ke.convert(model, **kw)
    models = tmp_path / "timings.models.json"
    data = json.loads(models.read_text())
    plans = [k for k in data["entries"] if json.loads(k)["what"] == "plan"]
    assert plans
    for k in plans:
        data["entries"][k]["features"].pop("first_rounds")
    models.write_text(json.dumps(data))
    _, rep2 = ke.convert(model, **kw)
    assert rep2.latency.reused == 1  # the per-layer table only
    assert rep2.latency.model_timings >= 1 and rep2.latency.measured is not None


# ---- channel pruning to a latency budget ---------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet():
    """Four inverted-residual blocks (hidden 96..192) at 48x48, random weights."""
    L = keras.layers
    keras.utils.set_random_seed(2)
    inp = keras.Input((48, 48, 3))
    h = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(24, 3, padding="same")(inp)))
    for hidden, out in ((96, 24), (144, 24), (144, 32), (192, 32)):
        y = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(hidden, 1, use_bias=False)(h)))
        y = L.DepthwiseConv2D(3, padding="same", use_bias=False)(y)
        y = L.ReLU(6.0)(L.BatchNormalization()(y))
        y = L.BatchNormalization()(L.Conv2D(out, 1, use_bias=False)(y))
        h = L.Add()([h, y]) if h.shape[-1] == out else y
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inp, L.Dense(10)(h), name="small_mobilenet")


@pytest.mark.filterwarnings("ignore:prune_channels. the latency budget")
def test_prune_channels_to_a_measured_latency(mobilenet, capsys):
    x = 0.8
    new, rep = ke.prune_channels(
        mobilenet, budget={"latency": x}, feedback_rounds=3, strict=False, progress=True
    )
    lat = rep.latency
    err = capsys.readouterr().err
    assert "prune_channels: measured 1/3:" in err
    assert lat["target"] == "litert-fp32 (2 threads)" and lat["budget"] == x
    assert 0 < lat["floor_macs_ratio"] < x
    assert lat["feedback"][0]["share"] == x  # the first guess: MACs at the latency share
    assert 1 <= len(lat["feedback"]) <= 3
    for f in lat["feedback"]:
        assert f["p10"] <= f["ratio"] <= f["p90"] and f["macs_ratio"] <= f["share"] + 1e-9
    # the returned model is one of those measured, confirmed with as many interleaved
    # rounds again, and it is the one built
    m = lat["measured"]
    same = [f for f in lat["feedback"] if f["macs_ratio"] == m["macs_ratio"]]
    assert same and m["confirmed"] and m["rounds"] >= 2 * max(f["rounds"] for f in same)
    under = [f for f in lat["feedback"] if f["ratio"] <= x]
    if under and m["ratio"] <= x:  # the first confirmed (closest from below) or the next
        ranked = sorted({f["macs_ratio"]: f["ratio"] for f in under}.items(), key=lambda t: -t[1])
        assert m["macs_ratio"] in [t[0] for t in ranked[:2]]
    assert (
        m["macs_ratio"]
        == rep.macs_ratio
        == ke.model_cost(new).total.macs / ke.model_cost(mobilenet).total.macs
    )
    assert rep.budget_met == (m["ratio"] <= x)
    measured = len({f["macs_ratio"] for f in lat["feedback"] if f["macs_ratio"] < 1.0})
    assert measured + 1 <= lat["model_timings"] <= measured + 2
    assert "latency on litert-fp32 (2 threads)" in str(rep)
    assert json.loads(json.dumps(rep.to_dict()))["latency"]["measured"]["ratio"] == m["ratio"]
    y = np.random.default_rng(0).random((1, 48, 48, 3), dtype=np.float32)
    assert new(y).shape == (1, 10)


def test_prune_channels_latency_arguments_fail_before_any_timing(mobilenet):
    with pytest.raises(ValueError, match="target= is used with budget=.'latency'"):
        ke.prune_channels(mobilenet, budget={"macs": 0.7}, target="litert-int8")
    with pytest.raises(ValueError, match="measured in LiteRT; target must be"):
        ke.prune_channels(mobilenet, budget={"latency": 0.7}, target="train")
    with pytest.raises(ValueError, match="keep= cannot be combined"):
        ke.prune_channels(mobilenet, budget={"latency": 0.7}, keep=0.5)
    with pytest.raises(ValueError, match=r"budget\['latency'\]=0 must be a share"):
        ke.prune_channels(mobilenet, budget={"latency": 0})
    with pytest.raises(ValueError, match="feedback_rounds must be an int in 1..10"):
        ke.prune_channels(mobilenet, budget={"latency": 0.7}, feedback_rounds=0)
    with pytest.raises(ValueError, match="round_to=0"):  # compress's checks, before timing
        ke.prune_channels(mobilenet, budget={"latency": 0.7}, round_to=0)
    with pytest.raises(ValueError, match="allocation='even'"):
        ke.prune_channels(mobilenet, budget={"latency": 0.7}, allocation="even")
    with pytest.raises(TypeError, match="alocation"):
        ke.prune_channels(mobilenet, budget={"latency": 0.7}, alocation="greedy")
    with pytest.raises(ValueError, match="prune_channels: calibration_data has samples of shape"):
        bad = np.zeros((4, 8, 8, 3), "float32")
        ke.prune_channels(mobilenet, budget={"latency": 0.7}, calibration_data=bad)
    inp = keras.Input((None, None, 3))
    free = keras.Model(inp, keras.layers.Conv2D(4, 1)(inp))
    with pytest.raises(ValueError, match="needs a fixed input size"):
        ke.prune_channels(free, budget={"latency": 0.7})
    # other budgets are compress.prune_channels': no latency record; the positional
    # arguments are compress.prune_channels' too
    _, rep = ke.prune_channels(mobilenet, budget={"macs": 0.7})
    assert rep.latency is None and rep.budget_met
    _, rep = ke.prune_channels(mobilenet, None, 0.5)
    assert {b.kept for b in rep.pruned} == {48, 72, 96}


def test_prune_channels_to_a_latency_of_1_keeps_the_original(mobilenet):
    new, rep = ke.prune_channels(mobilenet, budget={"latency": 1.0}, feedback_rounds=2)
    m = rep.latency["measured"]
    assert m["ratio"] == 1.0 and not m["confirmed"] and rep.budget_met
    assert rep.latency["model_timings"] == 0 and not rep.pruned


def test_a_confirmation_that_disagrees_is_timed_a_third_time():
    from keras_eigenconv.latency import _confirmed_samples

    o, c = Sleeper(0.004), Sleeper(0.008)
    # a first measurement that agrees with the candidate (ratio about 2): 15 more rounds
    o1, c1 = [0.004] * 15, [0.008] * 15
    o2, c2 = _confirmed_samples(o, c, o1, c1)
    assert len(o2) in (30, 45) and o2[:15] == o1  # the first rounds kept, in order
    # a first measurement taken under a burst (ratio 1): the two sets disagree by more
    # than 0.05, so a third set decides, and the median follows the two that agree
    o3, c3 = _confirmed_samples(o, c, [0.008] * 15, [0.008] * 15)
    assert len(o3) == 45  # three sets as large as the first
    r = np.asarray(c3) / np.asarray(o3)
    assert np.median(r) > 1.3


def test_a_refused_latency_budget_points_to_channel_pruning(mobilenet, model):
    with pytest.raises(ValueError, match="cannot be met") as exc:
        ke.convert(mobilenet, method="svd", budget={"latency": 0.05}, ranks_per_layer=2)
    assert "4 inverted-residual blocks" in str(
        exc.value
    ) and "ke.prune_channels(model, budget={'latency': 0.05}, target='litert-fp32')" in str(
        exc.value
    )
    # a model without such blocks gets no pointer
    with pytest.raises(ValueError, match="cannot be met") as exc:
        ke.convert(model, method="svd", budget={"latency": 0.01}, ranks_per_layer=2)
    assert "prune_channels" not in str(exc.value)


@pytest.mark.filterwarnings("ignore:prune_channels. the latency budget")  # 1 round: may miss
def test_prune_channels_to_a_latency_of_1_converts_nothing(mobilenet, monkeypatch):
    # x = 1 needs no pruning: the original is returned without being converted for LiteRT
    from keras_eigenconv import latency

    converted = []
    real = latency._interpreter

    def counting(model, target):
        converted.append(model is mobilenet)
        return real(model, target)

    monkeypatch.setattr(latency, "_interpreter", counting)
    new, rep = ke.prune_channels(mobilenet, budget={"latency": 1.0})
    assert converted == [] and rep.latency["model_timings"] == 0 and not rep.pruned
    # a budget that needs pruning converts the original once, and each pruned model
    _, rep = ke.prune_channels(mobilenet, budget={"latency": 0.9}, feedback_rounds=1, strict=False)
    assert converted == [True, False]


def test_the_next_plan_below_is_confirmed_when_the_closest_confirms_above():
    # the choice convert and prune_channels share: a pure function of the measurements
    from keras_eigenconv.latency import _confirm_closest

    confirms = {"a": 0.72, "b": 0.66, "c": 0.50, "d": 0.90}  # what a confirmation reads
    asked = []

    def confirm(item):
        asked.append(item)
        return {"ratio": confirms[item]}

    measured = [(0.69, "a"), (0.64, "b"), (0.45, "c"), (0.80, "d")]
    # "a" is closest to 0.7 from below but confirms above it: "b" is confirmed and kept
    assert _confirm_closest(measured, 0.7, confirm) == ("b", {"ratio": 0.66})
    assert asked == ["a", "b"]
    # a first confirmation under x: nothing else is timed
    asked.clear()
    assert _confirm_closest(measured, 0.75, confirm)[0] == "a" and asked == ["a"]
    # nothing measured under x: the fastest is confirmed alone, and returned even though
    # it misses (the caller reports the miss)
    asked.clear()
    assert _confirm_closest([(0.80, "d"), (0.95, "a")], 0.7, confirm)[0] == "d"
    assert asked == ["d"]
    # both confirm above x: the confirmed fastest of the two
    asked.clear()
    confirms.update(a=0.75, b=0.71)
    assert _confirm_closest(measured, 0.7, confirm)[0] == "b" and asked == ["a", "b"]


def test_machine_info_names_the_cpu_features_that_select_kernels():
    # whole-model records are keyed by it, and benchmark headers print it: an int8 timing
    # taken with AMX/VNNI kernels must not be replayed on a CPU without them
    from pathlib import Path

    from keras_eigenconv.deploy.timing import _ISA_FLAGS, machine_info
    from keras_eigenconv.latency import _machine

    info = machine_info()
    assert set(info) == {"machine", "cpu", "cpus", "isa", "platform"}
    assert info["cpu"] and info["cpus"] >= 1 and info["isa"] == sorted(info["isa"])
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        flags = next(
            (
                ln.split(":", 1)[1].split()
                for ln in lines
                if ln.split(":")[0].strip() in ("flags", "Features")
            ),
            [],
        )
        assert info["isa"] == sorted(set(flags) & _ISA_FLAGS)
    assert _machine()["isa"] == info["isa"] and _machine()["cpu"] == info["cpu"]
    from keras_eigenconv.deploy.timing import machine_summary

    line = machine_summary()
    assert info["cpu"] in line and ", ".join(info["isa"]) in line and f"{info['cpus']} CPUs" in line
    info["isa"].append("changed")  # a caller's copy: the cached answer stays as it was
    assert "changed" not in machine_info()["isa"]


def test_train_candidates_are_timed_as_the_converted_layer_trains():
    from keras_eigenconv.latency import _training_paths

    source = keras.layers.Conv2D(16, 3, padding="same", activation="relu")
    source.build((None, 12, 12, 8))
    svd = get_method("svd").candidate(source, 4)
    both = _training_paths(svd, source, "auto")
    assert sorted(both) == ["dense", "factorized"]
    for path, (layer,) in both.items():
        cfg = layer.get_config()
        assert cfg["activation"] == "relu" and cfg["training_implementation"] == path
    # a fixed implementation is timed as it is built: that path only
    (only,) = _training_paths(svd, source, "factorized").values()
    assert only[0].get_config()["implementation"] == "factorized"
    # a batch-normalized basis layer trains one way
    basis = get_method("basis").candidate(source, 4, {"batch_norm": True})
    assert list(_training_paths(basis, source, "auto")) == ["factorized"]
