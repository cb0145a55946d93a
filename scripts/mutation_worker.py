"""One long-lived pytest process that runs many mutants without importing TensorFlow again.

Started by ``scripts/mutation.py --sample N`` inside a scratch copy's ``mutants/`` folder
(mutmut's generated code, where every mutated function is a trampoline that reads the
active mutant from ``MUTANT_UNDER_TEST`` at each call). It imports pytest once, then reads
one request per line from stdin (a mutant name, or JSON ``{"name": ..., "tests": [...]}``
naming the tests to run), sets ``MUTANT_UNDER_TEST`` to it, runs the tests (by default the
module's test files) with ``pytest.main`` in this process (``-x``: the first failure kills
the mutant) and answers one JSON line on the original stdout. TensorFlow and the test modules
stay imported between mutants; nothing is forked (TensorFlow's thread pools do not survive
``fork``, which is why mutmut's own runner hangs on these modules). The name ``stats``
runs the tests once with mutmut's call recording on and answers, per function they reach,
the tests that reach it (as mutmut's own runner records them) and each test's seconds.

Usage (by mutation.py): ``python mutation_worker.py '<pytest args as JSON>'``.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    args = json.loads(sys.argv[1])
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    log = os.open(os.environ.get("MUTATION_WORKER_LOG", os.devnull), os.O_WRONLY | os.O_CREAT)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.path.insert(0, os.getcwd())  # the mutated package, not the installed one
    # mutmut wraps each mutated function in a trampoline (functools.wraps); Keras's
    # Operation.__new__ reads a layer's __init__ with inspect.getfullargspec, which does not
    # follow __wrapped__ and sees (*args, **kwargs). Follow it, in this process only.
    import inspect

    argspec = inspect.getfullargspec
    inspect.getfullargspec = lambda func: argspec(inspect.unwrap(func))
    import pytest
    from mutmut.state import state

    proto.write(json.dumps({"ready": True}) + "\n")
    import keras

    class Recorder:
        """Per test: the mutated functions it reached (mutmut's StatsCollector, as a plugin)."""

        def __init__(self):
            self.tests: dict[str, list[str]] = {}
            self.seconds: dict[str, float] = {}

        def pytest_runtest_teardown(self, item, nextitem):
            for function in state()._stats:
                self.tests.setdefault(function, []).append(item.nodeid)
            state()._stats.clear()

        def pytest_runtest_makereport(self, item, call):
            self.seconds[item.nodeid] = self.seconds.get(item.nodeid, 0.0) + call.duration

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        request = json.loads(line) if line.startswith("{") else {"name": line}
        name, tests = request["name"], request.get("tests")
        run_args = list(args)
        if tests:  # only these tests (they reach the mutated function), in collection order
            run_args = [*tests, *args[args.index("-k") :]] if "-k" in args else list(tests)
        recorder = Recorder() if name == "stats" else None
        # a fresh Keras state per run, as a fresh process has: tests that expect default
        # layer names ("dropout", not "dropout_3") otherwise fail from the second run on
        keras.backend.clear_session()
        os.environ["MUTANT_UNDER_TEST"] = name
        start = time.perf_counter()
        plugins = [recorder] if recorder is not None else []
        code = int(pytest.main(["-x", "-q", *run_args], plugins=plugins))
        answer = {"name": name, "exit": code, "seconds": round(time.perf_counter() - start, 2)}
        if recorder is not None:
            answer["hit"] = sorted(recorder.tests)
            answer["tests"] = recorder.tests
            answer["test_seconds"] = {k: round(v, 3) for k, v in recorder.seconds.items()}
        proto.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
