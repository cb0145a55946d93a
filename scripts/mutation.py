"""Mutation testing of the core modules with mutmut; writes benchmarks/results/mutation.*.

For each core module, a scratch copy of the repository (its git-tracked files) gets a
``[tool.mutmut]`` section that mutates only that module and runs only that module's own test
files (the whole fast suite per mutant is too slow on 2 cores); ``mutmut run`` then forks
one process per mutant and runs the tests that cover the mutated function. The score is
``killed / (killed + survived)`` over the mutants that ran. Results merge into
``benchmarks/results/mutation.json`` (modules not run this time keep their last entry) and
``mutation.md``.

Usage::

    python scripts/mutation.py                         # every core module (hours on 2 cores)
    python scripts/mutation.py --modules ranks matrix  # some of them
    python scripts/mutation.py --timeout 1200          # per module, seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "mutation"

# module -> its own test files (what kills its mutants)
MODULES = {
    "matrix": (
        "keras_eigenconv/decompositions/matrix.py",
        ["tests/test_decompositions_matrix.py"],  # direct NumPy tests of every function
    ),
    "tensor": ("keras_eigenconv/decompositions/tensor.py", ["tests/test_decompositions_tensor.py"]),
    "structured": (
        "keras_eigenconv/decompositions/structured.py",
        ["tests/test_decompositions_structured.py"],  # test_ssc.py's layer tests: too slow
    ),
    "ranks": (
        "keras_eigenconv/compress/ranks.py",
        ["tests/test_ranks.py", "tests/test_allocation.py"],
    ),
    "convert": (
        "keras_eigenconv/compress/convert.py",
        [
            "tests/test_surgery.py",
            "tests/test_planted_bugs.py",
            "tests/test_convert_checks.py",
            "tests/test_calibration.py",  # data-aware conversion (convert's _calibrate)
        ],
    ),
    "base": (
        "keras_eigenconv/layers/base.py",
        ["tests/test_contract.py", "tests/test_layer_checks.py"],
    ),
    "rewrite": (
        "keras_eigenconv/deploy/rewrite.py",
        [
            "tests/test_inference.py",
            "tests/test_rewrite_checks.py",  # written for this module's survivors
            "tests/test_planted_bugs.py",
            "tests/test_robustness.py::test_lambda_model_advice_works",
        ],
    ),
    "export": (
        "keras_eigenconv/deploy/export.py",
        ["tests/test_export.py", "tests/test_export_checks.py"],
    ),
    "pruning": (
        "keras_eigenconv/training/pruning.py",
        ["tests/test_pruning_unit.py", "tests/test_training.py"],
    ),
}

# why a module has no score yet (shown in mutation.md until a run gives it one)
NOT_RUN: dict[str, str] = {}

_M = "keras_eigenconv.decompositions.matrix.x_"
_R = "keras_eigenconv.compress.ranks.x_"
_SLICED = (
    "the factors come from the full Gram eigendecomposition either way and are sliced to "
    "rank afterwards: the same first rank triplets (equivalent, the mutant only does more work)"
)
_FULL = (
    "full_matrices=True only adds singular vectors beyond min(kh*kw, N), which decef_factors "
    "slices away (rank <= min(kh*kw, N)): equivalent"
)
_T = "keras_eigenconv.decompositions.tensor.x_"
_VBMF = (
    "not explained: a change inside VBMF's noise-variance search (its free energy, tau, "
    "xubar); on 72 graded-spike matrices it changes the rank only for components within 3% of "
    "the threshold of the true noise variance (or never), finer than EVBMF's own estimate "
    "matches that threshold, so the test (+-6%) cannot pin it; no independent EVBMF "
    "implementation is available here as an oracle"
)
_TENSOR = [
    ("balanced_modes__mutmut_23", "a leftover factor 1 multiplies a mode by 1: equivalent"),
    (
        "tt_svd__mutmut_36 tt_svd__mutmut_38 tt_svd__mutmut_46",
        "full_matrices=True only adds singular vectors past len(s), sliced away by [:, :r]: "
        "equivalent",
    ),
    (
        "tt_svd__mutmut_45 tt_matrix_factors__mutmut_66 tt_matrix_full__mutmut_17 "
        "tt_conv_factors__mutmut_68 tt_conv_full__mutmut_32 _unfoldings__mutmut_15 "
        "_unfoldings__mutmut_29",
        "reshape(..., -2): NumPy infers any negative size like -1: equivalent",
    ),
    (
        "tt_svd__mutmut_56",
        "tail reversed: only the count of tail values above delta is used: equivalent",
    ),
    (
        "tt_full__mutmut_12 tt_full__mutmut_14 tt_conv_full__mutmut_3 tt_conv_full__mutmut_5",
        "the other operand (or tt_full itself) is float64 already, so the product is float64: "
        "equivalent",
    ),
    ("tt_conv_full__mutmut_74", "range(2, 2d + 2, 2) == range(2, 2d + 1, 2): equivalent"),
    (
        "_unfoldings__mutmut_21 _unfoldings__mutmut_23",
        "another column order of the filter unfolding (N, kh*kw*C): the same singular values "
        "and left singular vectors, all that Tucker-2 uses: equivalent",
    ),
    (
        "tucker2_factors__mutmut_29 tucker2_factors__mutmut_34 tucker2_factors__mutmut_37",
        "einsum's optimize flag changes only the contraction order (speed): equivalent",
    ),
    (
        "tucker2_factors__mutmut_36 tucker2_full__mutmut_10 cp_full__mutmut_12",
        "upper-case einsum subscripts name the same axes: equivalent",
    ),
    ("_cp_exact__mutmut_3", "with N == C either exact construction is exact: equivalent"),
    (
        "cp_factors__mutmut_1 cp_factors__mutmut_44 cp_factors__mutmut_46 cp_factors__mutmut_39",
        "ALS stopping (n_iter_max 301 or 100 instead of 300, tol 1e-8 or none instead of "
        "1e-10): results differ only at the convergence level, which no test pins (not "
        "strictly equivalent)",
    ),
    (
        "cp_factors__mutmut_3 cp_factors__mutmut_40 cp_factors__mutmut_45 cp_factors__mutmut_47",
        "parafac's random state is unused with init='svd' (and 'svd' is its default): equivalent",
    ),
    (
        "cp_factors__mutmut_31",
        "the filter ignores every warning class inside the call instead of UserWarning only "
        "(no effect on the factors)",
    ),
    ("cp_factors__mutmut_60", "sign is +-1, so x * sign == x / sign: equivalent"),
    (
        "vbmf_rank__mutmut_3 vbmf_rank__mutmut_5",
        "np.linalg.svd converts to float64 itself and isfinite accepts ints: equivalent",
    ),
    (
        "vbmf_rank__mutmut_18",
        "a square matrix is transposed: the same singular values: equivalent",
    ),
    ("vbmf_rank__mutmut_24", "compute_uv=None is falsy like False: equivalent"),
    (
        "vbmf_rank__mutmut_100",
        "at lower == upper the bounded search has one point, upper itself: equivalent",
    ),
    (
        "vbmf_rank__mutmut_106 vbmf_rank__mutmut_111 vbmf_rank__mutmut_114",
        "SciPy takes the method name case-insensitively and uses 'bounded' when bounds are "
        "given: equivalent",
    ),
    (
        "vbmf_rank__mutmut_133 _evb_objective__mutmut_10 _evb_objective__mutmut_12",
        "a tie at the threshold (a continuous value): equivalent in practice",
    ),
    (
        "_evb_objective__mutmut_21 _evb_objective__mutmut_22 _evb_objective__mutmut_49 "
        "_evb_objective__mutmut_50 _evb_objective__mutmut_51 vbmf_rank__mutmut_64",
        "a term multiplied by residual = 0 or by L - H = 0: equivalent",
    ),
    (
        "vbmf_rank__mutmut_49 vbmf_rank__mutmut_55 vbmf_rank__mutmut_57 vbmf_rank__mutmut_59 "
        "vbmf_rank__mutmut_60 vbmf_rank__mutmut_61 vbmf_rank__mutmut_63 vbmf_rank__mutmut_68 "
        "vbmf_rank__mutmut_70 vbmf_rank__mutmut_71 vbmf_rank__mutmut_72 vbmf_rank__mutmut_74 "
        "vbmf_rank__mutmut_75 vbmf_rank__mutmut_76 vbmf_rank__mutmut_77 vbmf_rank__mutmut_78",
        "moves only a bound of the sigma^2 search interval; the free-energy minimum lies inside "
        "both intervals in every test case, so the same sigma^2 is found (not equivalent for "
        "a minimum at the bound)",
    ),
    (
        "_tau__mutmut_6 _tau__mutmut_8 _tau__mutmut_15 _evb_objective__mutmut_24 "
        "_evb_objective__mutmut_42 _evb_objective__mutmut_48 vbmf_rank__mutmut_30 "
        "vbmf_rank__mutmut_37 vbmf_rank__mutmut_42 vbmf_rank__mutmut_44 vbmf_rank__mutmut_45",
        _VBMF,
    ),
]
_S = "keras_eigenconv.decompositions.structured.x"
_STRUCTURED = [
    ("__divisors__mutmut_7", "n + 1 never divides n: equivalent"),
    (
        "ǁSSCPatternǁdense_index_map__mutmut_9 ǁSSCPatternǁdense_index_map__mutmut_12",
        "NumPy 2's default integer is int64 on every platform: equivalent",
    ),
    (
        "ǁSSCPatternǁfull_pointwise_index_map__mutmut_1 "
        "ǁSSCPatternǁfull_pointwise_index_map__mutmut_2",
        "any default other than 'grouped' means the natural order: equivalent",
    ),
    (
        "_channel_shuffle_plan__mutmut_29",
        "meshgrid's 'xy' indexing visits the same (i, j) pairs in another order: equivalent",
    ),
    (
        "_channel_shuffle_plan__mutmut_36 _channel_shuffle_plan__mutmut_38",
        "a float candidate compares equal to the int index value by value: equivalent",
    ),
    (
        "_channel_shuffle_plan__mutmut_50 _channel_shuffle_plan__mutmut_52 "
        "_channel_shuffle_plan__mutmut_54",
        "a == C is a pure roll, which a == 1 (tried first) already matches: dead branch, "
        "equivalent",
    ),
    (
        "_ssc_dense_kernel__mutmut_4 _ssc_dense_kernel__mutmut_6 _ssc_dense_kernel__mutmut_10 "
        "_ssc_dense_kernel__mutmut_12",
        "concatenating with the float [0.0] makes the flat weights float64 anyway: equivalent",
    ),
    ("_ssc_shift_energies__mutmut_25", "SSCPattern's shift defaults to 0: equivalent"),
    ("_ssc_shift_energies__mutmut_49", "astype(None) is float64: equivalent"),
    ("_ssc_shift_energies__mutmut_68", "the summed spectrum is 1-D: axis -1 is axis 0"),
    (
        "_ssc_best_shift__mutmut_19",
        "the maximum itself is always within the positive tolerance: equivalent",
    ),
    (
        "_center_tap_window__mutmut_11 _center_tap_window__mutmut_13 _center_tap_window__mutmut_14",
        "a longer stand-in length for an unknown one: with stride 1 the window does not depend "
        "on it: equivalent",
    ),
    ("_center_tap_window__mutmut_39", "max(x, 1) // 2 == max(x, 0) // 2 for ints: equivalent"),
    (
        "_center_tap_window__mutmut_66 _center_tap_window__mutmut_72 _center_tap_window__mutmut_75",
        "one more zero of padding at an end, skipped by start (or end_trim): the same slice",
    ),
]
# surviving mutant -> why it is equivalent (no test can kill it); the results list every
# survivor with its reason, or "not explained"
EQUIVALENT = {
    _M + "_gram_key__mutmut_4": "the cache key's hash length (64 instead of 16 bytes): "
    "either identifies the matrix; equivalent",
    _M + "_gram_key__mutmut_6": "the cache key's hash length (17 instead of 16 bytes): equivalent",
    _M + "singular_energies__mutmut_10": "a square matrix then takes its transpose's Gram "
    "matrix, which has the same eigenvalues: equivalent",
    _M + "gram_svd__mutmut_29": "the fallback is only used when s is empty, where the "
    "comparison has no entries: equivalent",
    _M + "_decef_svd__mutmut_19": _FULL,
    _M + "_decef_svd__mutmut_21": _FULL,
    _M + "_decef_svd__mutmut_22": _FULL,
    _M + "basis_factors__mutmut_8": _SLICED,
    _M + "basis_factors__mutmut_10": _SLICED,
    _M + "svd_channel_factors__mutmut_6": _SLICED,
    _M + "svd_channel_factors__mutmut_8": _SLICED,
    _M + "svd_spatial_factors__mutmut_6": _SLICED,
    _M + "svd_spatial_factors__mutmut_8": _SLICED,
    **{_T + name: reason for names, reason in _TENSOR for name in names.split()},
    **{_S + name: reason for names, reason in _STRUCTURED for name in names.split()},
    _R + "energy_rank__mutmut_6": "decompositions.energy_rank converts to float64 itself: "
    "equivalent",
    _R + "energy_rank__mutmut_8": "decompositions.energy_rank converts to float64 itself: "
    "equivalent",
    _R + "effective_rank__mutmut_8": "a float32 spectrum gets a float32 square root before "
    "entropy_rank converts to float64 (1e-7 relative in exp(H), seen by ceil(r - 1e-9) only at "
    "an exact integer, i.e. a flat spectrum, whose roots are exact); ints become float64 in "
    "np.maximum(..., 0.0): equivalent in practice",
    _R + "effective_rank__mutmut_10": "as effective_rank__mutmut_8 (dtype argument dropped)",
    _R + "effective_rank__mutmut_31": "the cap max(1, s.size) binds only for an empty "
    "spectrum, where min(1, 2) is 1 too (exp(H) never exceeds the number of values): "
    "equivalent",
    _R + "relative_errors__mutmut_13": "for a descending spectrum with a positive total every "
    "partial sum is >= 0, so 1 - cumsum / total <= 1: the upper clip never binds",
    _R + "relative_errors__mutmut_22": "as relative_errors__mutmut_13 (upper clip at 2)",
    _R + "candidate_ranks__mutmut_16": "NumPy 2's default integer is int64 on every platform: "
    "equivalent",
    _R + "candidate_ranks__mutmut_18": "NumPy 2's default integer is int64 on every platform: "
    "equivalent",
    _R + "_options__mutmut_10": "an option costing as much as the original is dominated by it "
    "(error 0, same cost): never on the hull, and the give-back's tie goes to the original "
    "(first in the list); no different result on 20,000 random instances",
    _R + "_hull__mutmut_3": "sorting whole (cost, error, rank) tuples only reorders options "
    "with equal cost and error, of which the front keeps one: equivalent",
    _R + "_hull__mutmut_5": "as _hull__mutmut_3 (the default sort key)",
    _R + "_hull__mutmut_8": "at equal cost a higher-error option sorted first stays on the "
    "hull at the cheap end, a segment that saves no cost and is never needed; no different "
    "result on 20,000 random instances",
    _R + "_hull__mutmut_30": "collinear points stay on the hull: the same segments, split; "
    "the bound is the same and greedy + give-back reach the same allocation (no different "
    "result on 20,000 random instances)",
    _R + "allocate_budget__mutmut_28": "hull[0] is the least-error option, error 0 (the "
    "original has error 0 and errors are clipped at 0), so e1 + e0 == e1 - e0",
    _R + "allocate_budget__mutmut_48": "one extra greedy step at total == target is undone "
    "exactly by the give-back (that key goes first and the cost it freed is the slack)",
    _R + "allocate_budget__mutmut_94": "a third give-back pass changes nothing: the slack only "
    "shrinks and every key already took the least-error option that fitted (so does the "
    "second pass: it is redundant)",
    _R + "allocate_budget__mutmut_98": "at zero slack only an option no dearer than the "
    "current hull point with less error could be taken, and hull points are on the Pareto "
    "front: none exists",
    _R + "allocate_budget__mutmut_104": "with equal errors allowed, the least (error, cost) "
    "option is the current hull point itself (the cheapest at its error): nothing changes",
    _R + "budget_lower_bound__mutmut_42": "at total == target further segments are taken "
    "with share min(1, 0 / saved) = 0: the same bound",
    **{
        _M + name: reason
        for names, reason in [
            ("_decef_svd__mutmut_28 _decef_svd__mutmut_30 _decef_svd__mutmut_31", _FULL),
            (
                "_gram_eigh__mutmut_3 shared_array__mutmut_14 "
                "shared_array__mutmut_15 shared_array__mutmut_16",
                "performance only: recomputes the Gram matrix the caller passed, or copies "
                "an array that already owns its data; the same values (not pinned: no test "
                "counts matrix products or copies)",
            ),
            (
                "_gram_svd__mutmut_34",
                "the fallback is only used when s is empty, where the comparison has no "
                "entries: equivalent",
            ),
            (
                "_kernel_gram__mutmut_13",
                "the returned orientation of a square unfolding: its callers use only its "
                "shape (the NaN path), the same either way: equivalent",
            ),
            (
                "_kernel_gram__mutmut_15 _kernel_gram__mutmut_22 _kernel_gram__mutmut_23 "
                "basis_spectrum__mutmut_3 basis_spectrum__mutmut_9 basis_spectrum__mutmut_10 "
                "svd_spatial_spectrum__mutmut_3 svd_spatial_spectrum__mutmut_9 "
                "svd_spatial_spectrum__mutmut_10",
                "another name for a kept result: the names only need to differ from the other "
                "kinds kept for the same kernel, and they still do: equivalent",
            ),
            (
                "_nbytes__mutmut_3",
                "iterating an array's rows sums the same bytes as the array: equivalent",
            ),
            (
                "_shared__mutmut_8",
                "differs only for a kept entry whose array is writeable, and kept arrays are "
                "read-only: equivalent",
            ),
            (
                "release_shared__mutmut_16 release_shared__mutmut_18",
                "the default of pop is never used: an owner's array is always among the kept "
                "arrays: equivalent",
            ),
        ]
        for name in names.split()
    },
    # the TensorFlow-side modules (sampled)
    "keras_eigenconv.training.pruning.x__replace_variable__mutmut_1": "scope '' instead of "
    "None: graph.replace_variable enters `scope or nullcontext()`, the same for both "
    "(and on TensorFlow the scope is always set): equivalent",
    "keras_eigenconv.compress.convert.x__shapes__mutmut_16": "the last axis (channels) of a "
    "conv's input is never None, so it is never replaced: equivalent",
    "keras_eigenconv.compress.convert.x__shapes__mutmut_15": "the batch axis set to 56: costs "
    "are counted per image from the axes after the batch, which they ignore: equivalent",
    "keras_eigenconv.compress.convert.x__choose_rank__mutmut_18": "a rank list kept as a list: "
    "Tucker-2 and TT layers convert a list rank to a tuple themselves (the same config, "
    "report and outputs, checked with rank=[2, 3]): equivalent",
    "keras_eigenconv.layers.base.xǁFactorizedConv2Dǁ_resolve_implementation__mutmut_23": "<= "
    "instead of < at the threshold: differs only for an estimate exactly equal to the "
    "threshold (a float ratio of MAC sums); equivalent in practice",
    "keras_eigenconv.layers.base.xǁCompressedLayerǁfrom_source__mutmut_7": "or instead of "
    "and: passes statistics=None (the default) or statistics to a method that needs none, "
    "which from_conv2d/from_dense drop: equivalent",
    "keras_eigenconv.layers.base.x_weights_config__mutmut_5": "a Keras layer's activation is "
    "never None (no activation is 'linear'), so the else branch is dead: equivalent",
    "keras_eigenconv.deploy.rewrite.x__renamed__mutmut_4": "the renaming branch is reached by "
    "no registered layer: every inference_layers() list has two or more layers, and the "
    "'dense' and 'native' arrangements keep the layer's name (a probe over test_inference and "
    "test_planted_bugs saw no call with another name); unreachable today",
    "keras_eigenconv.deploy.rewrite.x_fold_batchnorm__mutmut_13": "the kernel read as float32 "
    "instead of float64: it is multiplied by the float64 BatchNorm scale, and NumPy promotes "
    "the product to float64 either way (the same bits): equivalent",
    "keras_eigenconv.deploy.rewrite.x_fold_batchnorm__mutmut_52": "in_dim computed for a "
    "depthwise layer too: only the plain-conv branch reads it: equivalent",
    "keras_eigenconv.deploy.rewrite.x__tile_depthwise__mutmut_90": "reshape(-2) instead of "
    "reshape(-1) for the flattened bias: NumPy 2.4 reads any negative size as 'the rest' "
    "(the same array; a test over it passes): equivalent on the NumPy the suite installs",
    "keras_eigenconv.deploy.export.x_check_tflite__mutmut_28": "the interpreter's default "
    "thread count instead of num_threads: the thread count changes the speed of the "
    "check, not its outputs (LiteRT's float kernels give the same results): equivalent",
    "keras_eigenconv.deploy.export.x_check_tflite__mutmut_151": "the warning's category None "
    "instead of UserWarning: warnings.warn reads None as UserWarning: equivalent",
    **{
        f"keras_eigenconv.deploy.export.x_export_tflite__mutmut_{i}": "the non-built-in-op "
        "guard changed (which op names it flags, or its message): unreachable, the converter "
        "is built with TFLITE_BUILTINS (or _INT8) only and without custom ops, so it refuses "
        "such an op first (the error test_non_builtin_op_is_named pins); a guard kept in case "
        "a converter setting changes: equivalent"
        for i in (195, 196, 198, 199, 200, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211)
    },
    "keras_eigenconv.deploy.export.x_export_tflite__mutmut_120": "the check inputs start as "
    "'' instead of None: they are read only by the self-check, which runs only when check is "
    "on, and then every branch assigns them: equivalent",
    "keras_eigenconv.deploy.rewrite.x__check_equal__mutmut_65": "< instead of <= against the "
    "tolerance: differs only for an error exactly equal to 1e-4 * max(scale, 1), a float "
    "that random inputs do not hit; equivalent in practice",
}

CONFIG = """
[tool.mutmut]
source_paths = ["keras_eigenconv"]
only_mutate = ["{module}"]
pytest_add_cli_args = ["-p", "no:xdist", "-p", "no:randomly", "-q"]
pytest_add_cli_args_test_selection = {tests}
"""


def _mutmut() -> str:
    return str(Path(sys.executable).with_name("mutmut"))


def run_module(name: str, timeout: float) -> dict:
    """Mutation-test one core module in a scratch copy of the repository.

    Args:
        name: A key of ``MODULES``.
        timeout: Seconds before ``mutmut run`` is stopped (the entry says so).

    Returns:
        The module's entry: counts, score, survivors, seconds, and whether it finished.
    """
    module, tests = MODULES[name]
    commit = _head()
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        work = Path(tmp)
        _scratch_copy(work, module, tests, commit)
        start = time.perf_counter()
        try:
            subprocess.run([_mutmut(), "run"], cwd=work, timeout=timeout, capture_output=True)
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
        seconds = time.perf_counter() - start
        subprocess.run([_mutmut(), "export-cicd-stats"], cwd=work, capture_output=True)
        stats_path = work / "mutants" / "mutmut-cicd-stats.json"
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        listing = subprocess.run(
            [_mutmut(), "results"], cwd=work, capture_output=True, text=True
        ).stdout
    names = sorted(re.findall(r"^\s*(\S+): survived", listing, re.M))
    survivors = [{"name": n, "reason": EQUIVALENT.get(n, "not explained")} for n in names]
    explained = sum(not sv["reason"].startswith("not explained") for sv in survivors)
    killed, survived = stats.get("killed", 0), stats.get("survived", 0)
    return {
        "module": module,
        "commit": commit,
        "tests": tests,
        "finished": finished,
        "seconds": round(seconds, 1),
        "total": stats.get("total", 0),
        "killed": killed,
        "survived": survived,
        "no_tests": stats.get("no_tests", 0),
        "timeout": stats.get("timeout", 0),
        "score": round(killed / (killed + survived), 4) if killed + survived else None,
        "explained": explained,
        "survivors": survivors,
    }


# modules whose tests need TensorFlow: sampled, run in one long-lived process (see below)
SAMPLED = {"convert", "base", "rewrite", "export", "pruning"}
# tests left out of a sampled run: they start a fresh Python process per run (slow), and
# would import the installed package there, not the mutated one
DESELECT = "not fresh_process"
# and per module: tests of its files that never reach it and take long (training from scratch)
SKIP = {
    "pruning": "not from_scratch",
    # a warning's stacklevel counts frames, and mutmut's trampoline adds one
    "export": "not warns_at_the_callers_line",
}


def _head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, check=True, text=True
    ).stdout.strip()


def _blob(commit: str, path: str) -> str:
    """The git object id of ``path`` at ``commit`` (equal ids: the same file content)."""
    return subprocess.run(
        ["git", "rev-parse", f"{commit}:{path}"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.strip()


def _scratch_copy(work: Path, module: str, tests: list[str], commit: str) -> None:
    """The repository at ``commit`` (not the working tree: a score belongs to a commit)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    with open(work / "pyproject.toml", "a") as fh:
        fh.write(CONFIG.format(module=module, tests=json.dumps(tests)))


class _Worker:
    """``scripts/mutation_worker.py`` in a scratch ``mutants/`` folder, restarted on a hang."""

    def __init__(self, cwd: Path, args: list[str], log: Path):
        self.cwd, self.args, self.log = cwd, args, log
        self.proc = None

    def _start(self) -> None:
        import queue
        import threading

        env = dict(__import__("os").environ, MUTATION_WORKER_LOG=str(self.log))
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        env.pop("MUTANT_UNDER_TEST", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "mutation_worker.py"), json.dumps(self.args)],
            cwd=self.cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines = lines = queue.Queue()  # this process's own queue: a killed one's
        proc = self.proc  # last lines must not reach its successor's

        def pump():
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        self._answer(600)  # {"ready": true}

    def _answer(self, timeout: float):
        import queue

        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return "timeout"
        return "crash" if line is None else json.loads(line)

    def run(self, name: str, timeout: float, tests: list[str] | None = None):
        """Runs the tests (``tests``, or all the module's) with ``name`` active.

        Returns:
            The worker's answer, "timeout" or "crash".
        """
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        request = name if tests is None else json.dumps({"name": name, "tests": tests})
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        answer = self._answer(timeout)
        if isinstance(answer, dict) and answer.get("name") != name:
            raise RuntimeError(f"mutation worker: asked for {name}, answered {answer}")
        if not isinstance(answer, dict):
            self.close()
        return answer

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _mutant_names(mutated: Path, dotted: str) -> list[str]:
    text = mutated.read_text()
    found = re.findall(r"^\s*(?:async )?def (x(?:_|ǁ\w+ǁ)\w+__mutmut_\d+)\(", text, re.M)
    return [f"{dotted}.{n}" for n in found]


def run_module_sampled(
    name: str, sample: int, seed: int, timeout: float, previous: dict | None = None
) -> dict:
    """Mutation-test a random sample of one module's mutants in one long-lived process.

    mutmut generates every mutant (the ``mutants/`` copy of the package, one trampoline per
    function); a seeded random sample of ``sample`` of them is run, each with the module's
    test files in ``scripts/mutation_worker.py`` (TensorFlow imported once, no fork). A
    first run with mutmut's call recording gives, per function, the tests that reach it: a
    mutant runs only those (as mutmut's own runner does), and a sampled mutant in a
    function no test reaches is counted under "no test covers it" without a run.

    Args:
        name: A key of ``MODULES``.
        sample: How many mutants to draw (all of them if there are fewer).
        seed: The draw's seed.
        timeout: Seconds for the whole module; mutants left when it runs out are not run.
        previous: The module's last entry: run only its survivors again (after new tests;
            the draw and the other mutants' results are kept).

    Returns:
        The module's entry, with ``sampled`` (the draw's size and seed) and the 95% Wilson
        interval of the score.
    """
    import random

    module, tests = MODULES[name]
    commit = _head()
    dotted = module[:-3].replace("/", ".")
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        work = Path(tmp)
        _scratch_copy(work, module, tests, commit)
        subprocess.run(
            [sys.executable, "-c", "from mutmut.__main__ import create_mutants; create_mutants(1)"],
            cwd=work,
            check=True,
            capture_output=True,
        )
        mutants = work / "mutants"
        for f in work.rglob("*"):  # tests, conftest, pyproject (with the config): as mutmut
            rel = f.relative_to(work)
            if f.is_file() and rel.parts[0] not in ("mutants", "keras_eigenconv"):
                (mutants / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, mutants / rel)
        names = _mutant_names(mutants / module, dotted)
        drawn = random.Random(seed).sample(names, min(sample, len(names)))
        status = {}
        if previous is not None:
            if _blob(previous.get("commit", commit), module) != _blob(commit, module):
                raise RuntimeError(f"{name}: {module} changed since its last run: run it anew")
            # the same source: the same mutants, and the same seeded draw
            seed, size = previous["sampled"]["seed"], previous["sampled"]["size"]
            drawn = random.Random(seed).sample(names, size)
            status = {
                n: v for n, v in previous["status"].items() if v not in ("survived", "no tests")
            }  # killed and timed-out mutants stay so (tests were only added); the rest run
        select = " and ".join(filter(None, [DESELECT, SKIP.get(name)]))
        worker = _Worker(mutants, [*tests, "-k", select], work / "worker.log")
        start = time.perf_counter()
        stats = worker.run("stats", 1800)
        if not isinstance(stats, dict) or stats["exit"] != 0:
            raise RuntimeError(f"{name}: the tests fail without a mutant: {stats}")
        forced = worker.run("fail", 1800)  # mutmut's check: every trampoline raises
        if not isinstance(forced, dict) or forced["exit"] == 0:
            raise RuntimeError(f"{name}: the tests do not run the mutated copy: {forced}")
        reached = set(stats["hit"])
        last_kill = None
        per_mutant = 3 * stats["seconds"] + 30
        for n in drawn:
            if n in status:
                continue
            if time.perf_counter() - start > timeout:
                break
            function = n.rpartition("__mutmut_")[0]
            if function not in reached:
                status[n] = "no tests"
                continue
            # only the tests that reach the mutated function (mutmut's own selection)
            reaching = stats["tests"][function]
            answer = worker.run(n, per_mutant, reaching)
            if answer == "crash":  # the process died: once more in a fresh one
                answer = worker.run(n, per_mutant, reaching)
            if answer in ("timeout", "crash"):
                status[n] = {"timeout": "timeout", "crash": "crashed"}[answer]
            else:  # pytest: 1 tests failed; 2-4 interrupted, internal or usage errors
                status[n] = {0: "survived", 1: "killed", 5: "no tests"}.get(answer["exit"], "error")
            print(f"{name}: {len(status)}/{len(drawn)} {n.rpartition('.')[2]} {status[n]}")
            if status[n] == "killed":
                last_kill = reaching
            if len(status) % CONTROL_EVERY == 0:  # also the subset that last killed
                _control(worker, name, len(status), per_mutant, last_kill)
        _control(worker, name, len(status), per_mutant)
        worker.close()
        seconds = time.perf_counter() - start
    counts = {k: sum(v == k for v in status.values()) for k in STATUSES}
    killed, survived = counts["killed"], counts["survived"]
    survivors = [
        {"name": n, "reason": EQUIVALENT.get(n, "not explained")}
        for n in sorted(status)
        if status[n] == "survived"
    ]
    return {
        "module": module,
        "commit": commit if previous is None else previous.get("commit", commit),
        **({} if previous is None else {"rerun_commit": commit}),
        "tests": tests,
        "finished": len(status) == len(drawn),
        "test_seconds": stats["seconds"],
        "seconds": round(seconds, 1),
        "total": len(names),
        "sampled": {"size": len(drawn), "run": len(status), "seed": seed},
        "killed": killed,
        "survived": survived,
        "no_tests": counts["no tests"],
        "timeout": counts["timeout"],
        "crashed": counts["crashed"],
        "error": counts["error"],
        "controls": "the tests passed without a mutant every "
        f"{CONTROL_EVERY} mutants (all of them, and those that last killed one, alone) "
        "and at the end",
        "score": round(killed / (killed + survived), 4) if killed + survived else None,
        "interval": _wilson(killed, killed + survived),
        "explained": sum(not sv["reason"].startswith("not explained") for sv in survivors),
        "survivors": survivors,
        "status": status,
    }


STATUSES = ("killed", "survived", "no tests", "timeout", "crashed", "error")
# every this many mutants (and at the end) the tests run once without a mutant: they must
# still pass in the long-lived process, or what it leaks between runs would count as kills
CONTROL_EVERY = 10


def _control(
    worker: _Worker, name: str, done: int, timeout: float, subset: list[str] | None = None
) -> None:
    """The tests must pass without a mutant ("none" matches none: the original code runs).

    Run on all the module's tests, and (``subset``) on the tests that last killed a mutant
    alone: a test that fails when run apart from the others would fake kills.
    """
    for tests in [None, subset] if subset else [None]:
        answer = worker.run("none", timeout, tests)
        if isinstance(answer, dict) and answer["exit"] == 0:
            continue
        kept = Path(tempfile.gettempdir()) / f"mutation-{name}-worker.log"
        shutil.copy(worker.log, kept)
        raise RuntimeError(
            f"{name}: after {done} mutants the tests {tests or 'all'} fail without a mutant "
            f"({answer}): the worker process leaks state between runs or the tests depend on "
            f"each other; its kills cannot be trusted (log: {kept})"
        )


def _wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """The 95% Wilson score interval of a proportion k / n (for a sampled score)."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def write(results: dict, meta: dict) -> None:
    """Write ``mutation.json`` and ``mutation.md``.

    Args:
        results: Module name -> entry (``run_module``).
        meta: The command, machine and versions.
    """
    OUT.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "modules": results}, indent=2) + "\n"
    )
    lines = [
        "# Mutation score of the core modules (mutmut)",
        "",
        f"Last run: `{meta['command']}` on {meta['machine']}, mutmut {meta['mutmut']}, "
        f"Python {meta['python']} (each module's entry in mutation.json has its own command). "
        "Each module's mutants run against its own test files only. Score = killed / (killed + "
        "survived); *explained* counts the survivors given a reason below: equivalent mutants "
        "(no test can tell them from the original), or, where the reason says so, changes "
        "no test here can pin (ALS convergence, the bounds of VBMF's search).",
        "",
        "| module | tests | mutants | killed | survived | explained | no test covers it "
        "| timed out | score | finished | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    survivors = []
    for name in MODULES:
        r = results.get(name)
        if r is None:
            why = NOT_RUN.get(name, "not run yet (time)")
            lines.append(f"| `{MODULES[name][0]}` | {why} | | | | | | | | | |")
            continue
        score = "" if r["score"] is None else f"{r['score']:.1%}"
        total = str(r["total"])
        if r.get("sampled"):
            drawn = r["sampled"]
            total = f"{drawn['run']} of {r['total']} (random sample, seed {drawn['seed']})"
            if r.get("interval"):
                lo, hi = r["interval"]
                score += f" (95% interval {lo:.0%}-{hi:.0%})"
        lines.append(
            f"| `{r['module']}` | {', '.join(Path(t).name for t in r['tests'])} | {total} "
            f"| {r['killed']} | {r['survived']} | {r.get('explained', 0)} | {r['no_tests']} "
            f"| {r['timeout']} | {score} | {'yes' if r['finished'] else 'no'} "
            f"| {r['seconds']:.0f} |"
        )
        for sv in r["survivors"]:
            sv = sv if isinstance(sv, dict) else {"name": sv, "reason": "not explained"}
            survivors.append(f"| `{sv['name']}` | {sv['reason']} |")
    if survivors:
        lines += ["", "## Surviving mutants", "", "| mutant | why it survives |", "|---|---|"]
        lines += survivors
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modules", nargs="+", choices=sorted(MODULES), default=list(MODULES))
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per module")
    p.add_argument(
        "--sample",
        type=int,
        default=60,
        help=f"mutants drawn per TensorFlow-side module ({', '.join(sorted(SAMPLED))})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the draw")
    p.add_argument(
        "--rerun-survivors",
        action="store_true",
        help="sampled modules: run only the last run's survivors again (after adding tests)",
    )
    p.add_argument(
        "--relabel",
        action="store_true",
        help="run nothing: re-apply EQUIVALENT's reasons to the survivors in mutation.json",
    )
    args = p.parse_args(argv)
    path = OUT.with_suffix(".json")
    results = json.loads(path.read_text())["modules"] if path.exists() else {}
    if args.relabel:
        for r in results.values():
            names = [sv["name"] if isinstance(sv, dict) else sv for sv in r["survivors"]]
            r["survivors"] = [
                {"name": n, "reason": EQUIVALENT.get(n, "not explained")} for n in names
            ]
            r["explained"] = sum(not sv["reason"].startswith("not") for sv in r["survivors"])
        write(results, json.loads(path.read_text())["meta"])
        return 0
    meta = {
        "command": "python scripts/mutation.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs",
        "python": platform.python_version(),
        "mutmut": version("mutmut"),
    }
    for name in args.modules:
        if name in SAMPLED:
            last = results.get(name) if args.rerun_survivors else None
            entry = run_module_sampled(name, args.sample, args.seed, args.timeout, last)
        else:
            entry = run_module(name, args.timeout)
        if path.exists():  # another run may have written other modules meanwhile
            results = {**json.loads(path.read_text())["modules"], name: results.get(name)}
        results[name] = {**entry, "command": meta["command"]}
        print(
            json.dumps({k: v for k, v in results[name].items() if k not in ("survivors", "status")})
        )
        write(results, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
