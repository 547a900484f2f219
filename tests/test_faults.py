"""Faults lose nothing: kill -9 (also mid checkpoint write), a full disk, two runs.

Every test drives a real training process (this file run as a script, see `_worker`)
on the tiny trainer model, faults it, checks what MODEL_DIR holds, then resumes in
this process and compares with one uninterrupted run: the trainable parameters must
be bit-identical. SIGTERM (checkpoint, then exit) is tested in tests/test_trainer.py.

  kill -9 mid-training       killed from outside after the step-2 checkpoint, while
                             the run holds MODEL_DIR's lock (a second run is refused)
  kill -9 mid-write          the process SIGKILLs itself inside orbax's commit of
                             checkpoint_4: data and state are written into the
                             temporary directory, the rename never happens
  disk full                  RLIMIT_FSIZE (which binds root too) makes every file
                             write of checkpoint_4 fail with EFBIG
"""
import os
import pathlib
import signal
import socket
import subprocess
import sys
from prompt_tuning import train as train_lib
from prompt_tuning.run_dir import layout
import time

import numpy as np
import pytest

TESTS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

import trainer_testlib as tl  # pylint: disable=g-import-not-at-top,wrong-import-position

STEPS = 8
PERIOD = 2


def _config(model_dir):
  # No evaluation; one log line at the end (so nothing but checkpoints is written
  # while a fault is armed).
  return tl.train_config(model_dir, train_steps=STEPS, checkpoint_period=PERIOD,
                         keep_checkpoints=10, log_period=1000)


def _train(model_dir, batches_fn=None):
  return train_lib.build_and_train(_config(model_dir), method=tl.partial_tuning(),
                       model_config=tl.tiny_config(), optimizer=tl.adam(),
                       batches_fn=batches_fn or tl.fixed_batches(8))


# ------------------------------------------------------------------ the worker


def _worker(model_dir: str, mode: str) -> None:
  """One training run with a fault armed by `mode` (runs in a subprocess).

  mode: 'slow'            sleep 1 s before every step after the first checkpoint;
        'kill_commit:<s>' SIGKILL itself when orbax commits checkpoint_<s>;
        'fsize:<s>'       from step <s> on, files may not grow past 64 bytes.
  """
  import resource  # pylint: disable=g-import-not-at-top
  kind, _, arg = mode.partition(":")
  base = tl.fixed_batches(8)

  def batches(start):
    for i, batch in enumerate(base(start)):
      step = start + i + 1  # the step this batch feeds
      if kind == "slow" and step > PERIOD:
        time.sleep(1.0)
      if kind == "fsize" and arg != "now" and step == int(arg):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (64, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
      yield batch

  if kind == "fsize" and arg == "now":  # the disk is full from the start (a rerun)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE,
                       (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
  if kind == "kill_commit":
    from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
      if self.get_final().name == f"checkpoint_{arg}":
        os.kill(os.getpid(), signal.SIGKILL)  # everything written, nothing renamed
      return await original(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
  _train(model_dir, batches)


def _start(model_dir, mode, compile_cache) -> subprocess.Popen:
  # The workers share a persistent compilation cache: one compiles, the rest load.
  # PYTHONPATH: the worker runs as a script, so without it `prompt_tuning` would be
  # the installed package rather than this checkout.
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]),
             JAX_COMPILATION_CACHE_DIR=str(compile_cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return subprocess.Popen([sys.executable, __file__, str(model_dir), mode], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ------------------------------------------------------------------ checks


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The trainable parameters of one uninterrupted run."""
  result = _train(tmp_path_factory.mktemp("reference") / "run")
  assert result.step == STEPS
  return result.trainable


def _same_params(result, reference):
  from prompt_tuning.params import flatten  # pylint: disable=g-import-not-at-top
  ours, theirs = flatten(result.trainable), flatten(reference)
  assert set(ours) == set(theirs)
  for path, value in theirs.items():
    np.testing.assert_array_equal(ours[path], value, err_msg=path)


def _committed(model_dir):
  from prompt_tuning.run_dir import train_state  # pylint: disable=g-import-not-at-top
  checkpointer = train_state.StateCheckpointer(str(model_dir), keep=10)
  try:
    return checkpointer.all_steps(), checkpointer.latest_step()
  finally:
    checkpointer.close()


def _entries(model_dir):
  return sorted(p.name for p in pathlib.Path(model_dir).iterdir())


def test_kill_9_during_training_resumes_bit_identical_and_second_run_is_refused(
    tmp_path, reference, compile_cache, caplog):
  from prompt_tuning.run_dir import lock as run_lock  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path / "run"
  proc = _start(model_dir, "slow", compile_cache)
  deadline = time.time() + 300
  while not (model_dir / f"checkpoint_{PERIOD}").is_dir():
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline, "no checkpoint within 300 s"
    time.sleep(0.05)

  # While it trains, a second run on the same MODEL_DIR is refused at once, naming
  # the holder; it writes nothing.
  record = (model_dir / "config.json").stat()
  with pytest.raises(run_lock.ModelDirLockedError) as refused:
    _train(model_dir)
  message = str(refused.value)
  assert f"pid {proc.pid}" in message and socket.gethostname() in message
  assert "--gin.MODEL_DIR" in message
  assert (model_dir / "config.json").stat().st_mtime_ns == record.st_mtime_ns

  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  steps, latest = _committed(model_dir)
  assert latest is not None and PERIOD <= latest < STEPS, steps

  # Rerunning the same command takes over the dead run's lock and resumes.
  with caplog.at_level("WARNING"):
    result = _train(model_dir)
  assert f"from pid {proc.pid}" in caplog.text and "did not exit cleanly" in caplog.text
  assert result.step == STEPS and min(result.losses) == latest + 1
  _same_params(result, reference)
  assert (model_dir / run_lock.LOCK_FILE).read_bytes() == b""  # released cleanly


def test_kill_9_inside_a_checkpoint_commit_keeps_the_previous_one_latest(
    tmp_path, reference, compile_cache):
  from prompt_tuning.run_dir import train_state  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path / "run"
  proc = _start(model_dir, "kill_commit:4", compile_cache)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == -signal.SIGKILL, err[-3000:]

  # checkpoint_4 was fully written into orbax's temporary directory, never renamed:
  # "latest" is still 2 (and a reader of MODEL_DIR sees no checkpoint_4).
  entries = _entries(model_dir)
  partial = [e for e in entries if e.startswith("checkpoint_4.orbax-checkpoint-tmp")]
  assert partial and "checkpoint_4" not in entries, entries
  assert {"state", "data"} <= set(os.listdir(model_dir / partial[0]))
  assert _committed(model_dir) == ([2], 2)
  assert layout.numpy_steps(str(model_dir)) == [2]

  result = _train(model_dir)
  assert result.step == STEPS and min(result.losses) == 3
  _same_params(result, reference)
  assert not [e for e in _entries(model_dir) if "tmp" in e]


def test_disk_full_at_checkpoint_time_is_a_clear_error_and_nothing_partial_is_kept(
    tmp_path, reference, compile_cache):
  model_dir = tmp_path / "run"
  proc = _start(model_dir, "fsize:4", compile_cache)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 1, err[-3000:]
  assert "Traceback" not in err, err[-3000:]  # the entry points' one-line error
  assert f"worker: error: Could not write {model_dir}/checkpoint_4 (File too large; " \
      in err and " MB free on " in err
  assert f"the latest complete checkpoint is still {model_dir}/checkpoint_2" in err
  assert "rerun the same command" in err

  entries = _entries(model_dir)
  assert not [e for e in entries if e.startswith("checkpoint_4")], entries
  assert _committed(model_dir) == ([2], 2)

  # A rerun with the disk still full: again one line naming a file, no raw
  # TensorFlow or orbax error, and nothing lost.
  proc = _start(model_dir, "fsize:now", compile_cache)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 1, err[-3000:]
  assert "Traceback" not in err and "tensorflow" not in err.lower(), err[-3000:]
  line = [l for l in err.splitlines() if "worker: error: " in l]
  assert len(line) == 1 and "Could not write " in line[0], err[-3000:]
  assert "File too large" in line[0] and " MB free on " in line[0]
  assert _committed(model_dir) == ([2], 2)

  result = _train(model_dir)
  assert result.step == STEPS and min(result.losses) == 3
  _same_params(result, reference)


if __name__ == "__main__":
  from prompt_tuning import errors  # pylint: disable=g-import-not-at-top
  errors.run_reporting("worker", _worker, sys.argv[1], sys.argv[2])
