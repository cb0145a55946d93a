"""Converted layers inside tf.distribute strategies give the single-device weights.

Each run is a subprocess (tests/_distribute_worker.py): logical CPU devices must be set
before TensorFlow initializes, and MultiWorkerMirroredStrategy needs one process per worker.
Keras 3 ``fit`` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so the
multi-worker run trains with the equivalent custom loop (``strategy.run``).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("_distribute_worker.py")


def _env(**extra):
    env = dict(os.environ)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", **extra})
    return env


def _run(mode, out, timeout=240):
    proc = subprocess.run(
        [sys.executable, str(WORKER), mode, str(out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out)


def _weights(npz):
    return [npz[f"arr_{i}"] for i in range(len([k for k in npz.files if k.startswith("arr_")]))]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _run("single", tmp_path_factory.mktemp("single") / "w.npz")


def _assert_same(a, b):
    wa, wb = _weights(a), _weights(b)
    assert len(wa) == len(wb) > 0
    for x, y in zip(wa, wb):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_mirrored_strategy_two_logical_cpus_matches_single_device(single, tmp_path):
    mirrored = _run("mirrored", tmp_path / "w.npz")
    assert int(mirrored["replicas"]) == 2
    assert mirrored["distributed"].all()  # factor variables were created under the scope
    _assert_same(mirrored, single)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_two_processes_matches_single_device(single, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), "multiworker", str(tmp_path / f"w{i}.npz")],
                env=_env(TF_CONFIG=tf_config),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert int(w0["replicas"]) == 2
    _assert_same(w0, w1)
    _assert_same(w0, single)
    assert w0["distributed"].all()
