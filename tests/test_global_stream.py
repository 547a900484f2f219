"""The training data stream is a function of the global step only: one process and
two processes (another mesh) train on the same global batches, and a run resumed
on another process count continues the same stream."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import data_stream_worker
from conftest import free_port, wait_for

WORKER = pathlib.Path(data_stream_worker.__file__)
REPO = WORKER.parents[1]
STEPS = 10


def _run(tmp, name, processes, model_dir, steps):
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=os.pathsep.join([str(REPO), str(WORKER.parent)]))
  env.pop("XLA_FLAGS", None)
  outs = [tmp / f"{name}_{i}.json" for i in range(processes)]
  procs = [subprocess.Popen(
      [sys.executable, str(WORKER), str(i), str(processes), str(port), str(outs[i]),
       str(model_dir), str(steps)], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(processes)]
  logs = wait_for(dict(enumerate(procs))).values()
  for proc, log in zip(procs, logs):
    assert proc.returncode == 0, log[-4000:]
  return [{int(k): v for k, v in json.loads(o.read_text())["losses"].items()}
          for o in outs]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("global_stream")
  single = _run(tmp, "single", 1, tmp / "single", STEPS)[0]
  double = _run(tmp, "double", 2, tmp / "double", STEPS)
  # Half the run on two processes, the rest on one, in the same MODEL_DIR.
  first = _run(tmp, "first", 2, tmp / "resumed", STEPS // 2)
  rest = _run(tmp, "rest", 1, tmp / "resumed", STEPS)[0]
  return single, double, first, rest


def test_two_processes_train_on_the_same_global_batches(runs):
  single, double, _, _ = runs
  assert sorted(single) == list(range(1, STEPS + 1))
  for losses in double:
    np.testing.assert_allclose([losses[s] for s in sorted(single)],
                               [single[s] for s in sorted(single)], rtol=1e-5)
  # The losses move: a stream of different batches would not match by chance.
  assert len({round(v, 4) for v in single.values()}) == STEPS


def test_resume_on_another_process_count_continues_the_stream(runs):
  single, _, first, rest = runs
  for losses in first:
    np.testing.assert_allclose([losses[s] for s in range(1, STEPS // 2 + 1)],
                               [single[s] for s in range(1, STEPS // 2 + 1)],
                               rtol=1e-5)
  assert sorted(rest) == list(range(STEPS // 2 + 1, STEPS + 1))
  np.testing.assert_allclose([rest[s] for s in sorted(rest)],
                             [single[s] for s in sorted(rest)], rtol=1e-5)
