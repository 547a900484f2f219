"""Resuming from a damaged or different MODEL_DIR (issue 14, item 5).

A damaged newest orbax checkpoint is moved aside with a warning and the previous
complete one is used (bit-identical to an uninterrupted run); with no previous one
the run refuses with what to do. A checkpoint written by another optimizer is a
one-line error naming what changed, not orbax's. An export that hits a full disk
names the file and the free space.
"""
import errno
import logging
import pathlib
import sys

import numpy as np
import optax
import pytest

TESTS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

import trainer_testlib as tl  # pylint: disable=g-import-not-at-top,wrong-import-position

from prompt_tuning.run_dir import train_state as ckpt  # pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_tuning.training import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_tuning import train as train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_tuning.errors import UserError  # pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_tuning.params import flatten  # pylint: disable=g-import-not-at-top,wrong-import-position


def _train(model_dir, steps=4, optimizer=None):
  config = tl.train_config(model_dir, train_steps=steps, checkpoint_period=2,
                           keep_checkpoints=5, log_period=1000)
  return train_lib.build_and_train(config, method=tl.partial_tuning(),
                       model_config=tl.tiny_config(), optimizer=optimizer or tl.adam(),
                       batches_fn=tl.fixed_batches(8))


def _damage(model_dir, step):
  """Deletes the data files of checkpoint `step` (a partial copy looks like this)."""
  files = [p for p in (model_dir / f"checkpoint_{step}" / "state").rglob("*")
           if p.is_file() and p.parent.name == "d"]
  assert files
  for f in files:
    f.unlink()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  return _train(tmp_path_factory.mktemp("reference") / "run").trainable


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, reference,
                                                                 caplog):
  model_dir = tmp_path / "run"
  _train(model_dir, steps=4)  # checkpoints 2 and 4
  _damage(model_dir, 4)
  with caplog.at_level(logging.WARNING):
    result = _train(model_dir, steps=4)  # resumes at 2, trains 3 and 4 again
  assert sorted(result.losses) == [3, 4]
  warning = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert warning and "checkpoint_4" in warning[0] and "checkpoint_2" in warning[0]
  assert (model_dir / "damaged_checkpoint_4").is_dir()
  for path, value in flatten(reference).items():
    np.testing.assert_array_equal(flatten(result.trainable)[path], value, err_msg=path)


def test_a_damaged_only_checkpoint_is_refused_with_what_to_do(tmp_path):
  model_dir = tmp_path / "run"
  _train(model_dir, steps=2)
  _damage(model_dir, 2)
  with pytest.raises(ckpt.CheckpointDamagedError) as error:
    _train(model_dir, steps=4)
  message = str(error.value)
  assert f"{model_dir.absolute()}/checkpoint_2 cannot be read" in message
  assert "no earlier checkpoint" in message and "damaged_checkpoint_2" in message
  assert isinstance(error.value, UserError)


def test_a_changed_optimizer_is_named_instead_of_orbax_errors(tmp_path):
  model_dir = tmp_path / "run"
  _train(model_dir, steps=2)  # adam: mu and nu
  with pytest.raises(ckpt.CheckpointMismatchError) as error:
    _train(model_dir, steps=4, optimizer=optax.sgd(0.1))
  message = str(error.value)
  assert "the optimizer changed since it was written" in message
  assert "opt_state/0/mu/" in message and "original OPTIMIZER" in message
  assert "\n" not in message
  assert not (model_dir / "damaged_checkpoint_2").exists()  # never skipped


def test_a_full_disk_during_an_export_names_the_file_and_free_space(tmp_path,
                                                                    monkeypatch):
  def full(path, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(np, "save", full)
  target = tmp_path / "numpy_checkpoints" / "checkpoint_3"
  with pytest.raises(ckpt.CheckpointWriteError) as error:
    ckpt.write_arrays(str(target), {"encoder.prompt.prompt": np.zeros((2, 3))})
  message = str(error.value)
  assert message.startswith(f"Could not write {target}/encoder.prompt.prompt.npy "
                            "(No space left on device; ")
  assert " MB free on " in message
  assert not target.exists() and not list(target.parent.glob(".*tmp*"))
