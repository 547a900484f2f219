"""MODEL_DIR's run lock, checkpoint write errors and safe loading, in process.

The real two-process cases (a second run refused while one trains, a kill -9'd run's
lock taken over on restart) are in tests/test_faults.py; the static scan for
pickle / eval / shell=True is tests/test_security.py.
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from prompt_tuning.run_dir import layout
from prompt_tuning.run_dir import lock as run_lock
from prompt_tuning.run_dir import train_state as ckpt
from prompt_tuning.params import unflatten


def _dead_pid() -> int:
  proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  return int(proc.stdout)


def _write_record(model_dir, **record):
  model_dir.mkdir(parents=True, exist_ok=True)
  (model_dir / run_lock.LOCK_FILE).write_text(json.dumps(record))


# ------------------------------------------------------------------ the run lock


def test_second_holder_is_refused_until_the_first_releases(tmp_path):
  first = run_lock.ModelDirLock(str(tmp_path / "run")).acquire()
  record = json.loads((tmp_path / "run" / run_lock.LOCK_FILE).read_text())
  assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
  with pytest.raises(run_lock.ModelDirLockedError) as error:
    run_lock.ModelDirLock(str(tmp_path / "run")).acquire()
  message = str(error.value)
  assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
  assert "--gin.MODEL_DIR" in message and run_lock.LOCK_FILE in message
  first.release()
  assert (tmp_path / "run" / run_lock.LOCK_FILE).read_bytes() == b""
  with run_lock.held(str(tmp_path / "run")) as again:  # free again, no warning
    assert again is not None


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
  pid = _dead_pid()
  _write_record(tmp_path / "run", pid=pid, host=socket.gethostname(),
                started="2026-01-01T00:00:00+00:00")
  with caplog.at_level("WARNING"):
    lock = run_lock.ModelDirLock(str(tmp_path / "run")).acquire()
  assert f"from pid {pid} on host {socket.gethostname()}" in caplog.text
  assert "did not exit cleanly" in caplog.text
  assert json.loads((tmp_path / "run" / run_lock.LOCK_FILE).read_text())["pid"] == \
      os.getpid()
  lock.release()


def test_without_flock_the_record_decides(tmp_path, monkeypatch):
  monkeypatch.setattr(run_lock, "fcntl", None)
  here = socket.gethostname()
  cases = [  # (record, age in seconds, taken over?)
      (dict(pid=os.getppid(), host=here), 0, False),  # alive on this host
      (dict(pid=_dead_pid(), host=here), 0, True),  # dead on this host
      (dict(pid=123, host="elsewhere"), 60, False),  # another host, recent
      (dict(pid=123, host="elsewhere"), 3 * 86400, True),  # another host, stale
      ({}, 0, True),  # empty: released cleanly
  ]
  for i, (record, age, taken) in enumerate(cases):
    model_dir = tmp_path / f"run{i}"
    _write_record(model_dir, **record)
    old = time.time() - age
    os.utime(model_dir / run_lock.LOCK_FILE, (old, old))
    lock = run_lock.ModelDirLock(str(model_dir))
    if taken:
      lock.acquire().release()
    else:
      with pytest.raises(run_lock.ModelDirLockedError, match=str(record["pid"])):
        lock.acquire()


def test_model_dir_under_a_file_is_a_clear_error(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(run_lock.ModelDirError, match="its parent must be a directory"):
    run_lock.ModelDirLock(str(tmp_path / "file" / "run")).acquire()


# ------------------------------------------------------------------ write errors


def test_failed_export_keeps_nothing_partial_and_the_old_export(tmp_path, monkeypatch):
  ckpt.write_arrays(str(tmp_path / "best"), {"p": np.ones(3)})

  def full(file, *args, **kwargs):  # half a file, then the disk is full
    del args, kwargs
    file.write(b"\x93NUMPY")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(ckpt.np, "save", full)
  with pytest.raises(ckpt.CheckpointWriteError, match="No space left on device"):
    ckpt.write_arrays(str(tmp_path / "best"), {"p": np.zeros(3)})
  assert sorted(os.listdir(tmp_path)) == ["best"]
  monkeypatch.undo()
  np.testing.assert_array_equal(layout.read_arrays(str(tmp_path / "best"))["p"],
                                np.ones(3))


def test_failed_state_save_removes_its_temporary_directory(tmp_path, monkeypatch):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  checkpointer = ckpt.StateCheckpointer(str(tmp_path), keep=3)
  state = {"step": jnp.zeros((), jnp.int32), "trainable": {"w": jnp.ones((2, 2))},
           "opt_state": {"m": jnp.zeros((2, 2))}}
  checkpointer.save(2, state, 2, data={"truncated_examples": 3})
  assert checkpointer.read_data(2) == {"truncated_examples": 3, "batches_consumed": 2}

  original = checkpointer.manager.save

  def failing(step, *args, **kwargs):
    (tmp_path / f"checkpoint_{step}.orbax-checkpoint-tmp").mkdir()
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(checkpointer.manager, "save", failing)
  with pytest.raises(ckpt.CheckpointWriteError) as error:
    checkpointer.save(4, state, 4)
  assert f"the latest complete checkpoint is still {tmp_path}/checkpoint_2" in str(
      error.value)
  assert isinstance(error.value, OSError)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_2"]
  monkeypatch.setattr(checkpointer.manager, "save", original)
  assert checkpointer.latest_step() == 2
  checkpointer.close()


# ------------------------------------------------------------------ safe loading


class _Exploit:
  """Unpickling this creates a file: proof that foreign code ran."""

  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (open, (self.target, "w"))


def test_safetensors_are_preferred_over_a_pickle_bin_in_the_same_directory(tmp_path):
  torch = pytest.importorskip("torch")
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning.checkpoints import tree  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.preset("tiny").replace(vocab_size=40, num_encoder_layers=1,
                                             num_decoder_layers=1)
  rng = np.random.default_rng(0)
  flat = {name: rng.normal(size=shape).astype(np.float32)
          for name, shape in tree.expected_shapes(config).items()}
  params = unflatten(flat)
  path = checkpoints.save_huggingface(tmp_path / "hf", params, config)
  marker = tmp_path / "side_effect"
  torch.save({"payload": _Exploit(str(marker))}, str(path / "pytorch_model.bin"))

  _, loaded = checkpoints.load(path)
  assert not marker.exists()
  np.testing.assert_array_equal(loaded["token_embedder"]["embedding"],
                                flat["token_embedder/embedding"])


def test_remote_model_dir_gets_no_lock_and_a_warning(caplog):
  with caplog.at_level("WARNING"):
    with run_lock.held("gs://bucket/run") as lock:
      assert lock is None
  assert "No run lock for the remote MODEL_DIR gs://bucket/run" in caplog.text
