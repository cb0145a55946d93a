"""scripts/check_readme.py: the README's figures match benchmarks/results/, and a changed
number in a results file makes the check fail."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def check_readme():
    spec = importlib.util.spec_from_file_location("check_readme", ROOT / "scripts/check_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_figures_match_the_results_files(check_readme):
    assert check_readme.check((ROOT / "README.md").read_text()) == []
    assert check_readme.main(["check_readme"]) == 0


@pytest.mark.parametrize(
    "name, selector",
    [
        ("latency_resnet50_224.json", "rows[model=SVD,precision=fp32].latency_ratio"),
        ("pareto.json", "rows[method=svd,budget=0.25].accuracy"),
        ("convert.json", "rows[model=ResNet50,method=svd].ratio"),
    ],
)
def test_a_changed_results_number_fails_the_check(
    check_readme, tmp_path, monkeypatch, name, selector
):
    shutil.copytree(ROOT / "benchmarks/results", tmp_path, dirs_exist_ok=True)
    data = json.loads((tmp_path / name).read_text())
    row = check_readme.select(data, selector.rsplit(".", 1)[0])
    row[selector.rsplit(".", 1)[1]] += 0.05
    (tmp_path / name).write_text(json.dumps(data))
    monkeypatch.setattr(check_readme, "RESULTS", tmp_path)
    errors = check_readme.check((ROOT / "README.md").read_text())
    assert errors and all(name in e for e in errors)


def test_selector_errors(check_readme):
    data = {"rows": [{"m": "a", "x": 1}, {"m": "a", "x": 2}]}
    assert check_readme.select(data, "rows[m=a,x=2].x") == 2
    assert check_readme.select(data, "rows[m=a|b,x=1].x") == 1
    with pytest.raises(KeyError, match="matches 2 elements"):
        check_readme.select(data, "rows[m=a].x")
    assert check_readme.select(data, "rows[m=a]*.x|max") == 2
    assert check_readme.select(data, "rows[m=a]*.x|min") == 1
    with pytest.raises(KeyError, match="must end in"):
        check_readme.select(data, "rows[m=a]*.x")
    with pytest.raises(KeyError, match="no element"):
        check_readme.select(data, "rows[m=c]*.x|min")


def test_the_demo_table_is_checked_against_its_run(check_readme, monkeypatch):
    # every row of docs/demo/results.json, the ship line and the command line are claims
    readme = (ROOT / "README.md").read_text()
    res = json.loads((ROOT / "docs/demo/results.json").read_text())
    demo = [c for c in check_readme._claims() if "docs/demo" in c[1]]
    assert len(demo) == len(res["rows"]) + 2
    monkeypatch.setattr(check_readme, "_claims", lambda: demo)
    assert check_readme.check(readme) == []
    macs = res["rows"][1]["MACs"]
    broken = readme.replace(f"| {macs:,} |", f"| {macs + 1:,} |")
    assert broken != readme
    errors = check_readme.check(broken)
    assert len(errors) == 1 and "docs/demo/results.json" in errors[0]
