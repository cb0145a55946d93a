"""Plant one of issue 16's audit bugs into a SCRATCH COPY of the repository, run tests, restore.

Never run it on a checkout others work in. Usage::

    cp -r . /tmp/mut && python scripts/plant_bug.py /tmp/mut rewrite_dense -- \
        -p no:xdist tests/test_planted_bugs.py

Prints ``PLANTED <name>: pytest rc=<rc> -> CAUGHT`` (some test failed) or ``SURVIVED``.
"""

import pathlib
import subprocess
import sys

MUTANTS = {
    "rewrite_dense": (
        "keras_eigenconv/deploy/rewrite.py",
        "chosen[id(layer)] = cands[best]",
        "chosen[id(layer)] = cands['dense']",
    ),
    "check_self": (
        "keras_eigenconv/deploy/export.py",
        "got = run_tflite(content_or_path, x, num_threads)",
        "got = [np.asarray(v) for v in keras.tree.flatten(model(x, training=False))]",
    ),
    "ssc_bias": (
        "keras_eigenconv/layers/ssc.py",
        "        if conv.use_bias:\n"
        "            layer.bias.assign(ops.convert_to_numpy(conv.bias))\n"
        "        return layer",
        "        return layer",
    ),
    "no_giveback": ("keras_eigenconv/compress/ranks.py", "", ""),
    "report_squared": (
        "keras_eigenconv/compress/convert.py",
        "        return float(rk.relative_errors(spectrum(layer, m, opts))[new.rank - 1])\n"
        "    return float(new.relative_error(layer))",
        "        return float(rk.relative_errors(spectrum(layer, m, opts))[new.rank - 1]) ** 2\n"
        "    return float(new.relative_error(layer)) ** 2",
    ),
    "no_prune": (
        "keras_eigenconv/training/pruning.py",
        "            if keep.size < layer.rank:\n                sliced.update",
        "            if False:\n                sliced.update",
    ),
    "spatial_sign": (
        "keras_eigenconv/decompositions/matrix.py",
        "    u = u[:, :rank].reshape(kh, 1, c, rank)",
        "    u = -u[:, :rank].reshape(kh, 1, c, rank)",
    ),
    # bugs the tests added in the mutation-testing session catch (tests/test_cli.py,
    # tests/test_pruning_unit.py, tests/test_analysis.py)
    "factorized_bias": (
        "keras_eigenconv/layers/base.py",
        "        if conv.use_bias:\n"
        "            layer.bias.assign(ops.convert_to_numpy(conv.bias))\n"
        "        return layer\n\n    def folded_kernel_and_bias",
        "        return layer\n\n    def folded_kernel_and_bias",
    ),
    "prune_smallest": (
        "keras_eigenconv/training/pruning.py",
        '    order = np.argsort(-a, kind="stable")',
        '    order = np.argsort(a, kind="stable")',
    ),
    "vbmf_tolerance": (
        "keras_eigenconv/decompositions/tensor.py",
        '            options={"xatol": 1e-6 * lower},\n',
        "",
    ),
}
root = pathlib.Path(sys.argv[1])
name = sys.argv[2]
args = sys.argv[4:]
path, old, new = MUTANTS[name]
if name == "no_giveback":
    old, new = "    for _ in range(2):", "    for _ in range(0):"
f = root / path
orig = f.read_text()
assert orig.count(old) == 1, (name, orig.count(old))
f.write_text(orig.replace(old, new))
try:
    rc = subprocess.call(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:randomly", *args], cwd=root
    )
finally:
    f.write_text(orig)
print(
    f"PLANTED {name}: pytest rc={rc} -> "
    + ("SURVIVED" if rc == 0 else "CAUGHT (or error, see log)")
)
