"""Batch shapes are checked against the mesh before anything is loaded."""
import pytest

import trainer_testlib as tl
from prompt_tuning import partitioning, shape_checks
from prompt_tuning import train as train_lib


class _Mesh:
  def __init__(self, data, model=1):
    self.shape = {"data": data, "model": model}
    self.size = data * model


def _check(batch=32, eval_batch=None, micro=None, data=1, processes=1, evaluates=True):
  return shape_checks.check_train_shapes(batch, eval_batch, micro, _Mesh(data),
                                         processes, evaluates)


def test_valid_shapes_give_the_per_process_batch():
  assert _check(32, data=4, processes=2) == 16
  assert _check(32, eval_batch=8, micro=4, data=8) == 32
  assert _check(32, micro=1) == 32
  assert _check(6, eval_batch=5, data=2, evaluates=False) == 6  # no eval: unchecked


@pytest.mark.parametrize("kwargs,flag,words", [
    (dict(batch=30, data=4), "--gin.BATCH_SIZE", "BATCH_SIZE 30"),
    (dict(batch=32, data=2, processes=3), "--gin.BATCH_SIZE", "3 process"),
    (dict(batch=32, eval_batch=12, data=8), "--gin.TrainConfig.eval_batch_size",
     "eval batch size 12"),
    (dict(batch=32, micro=3), "--gin.NUM_MICROBATCHES", "does not divide"),
    (dict(batch=32, micro=8, data=8), "--gin.NUM_MICROBATCHES", "4 rows"),
    (dict(batch=32, micro=0), "--gin.NUM_MICROBATCHES", "positive integer"),
])
def test_bad_shapes_are_one_line_errors_naming_the_flag(kwargs, flag, words):
  with pytest.raises(shape_checks.ShapeError) as info:
    _check(**kwargs)
  message = str(info.value)
  assert flag in message and words in message
  assert "\n" not in message


def test_train_refuses_before_loading_the_checkpoint(tmp_path):
  """A bad eval batch used to surface only at the first evaluation."""
  missing = tmp_path / "no_such_checkpoint"  # loading it would fail differently
  for overrides, flag in ((dict(eval_period=10, eval_batch_size=3),
                           "eval_batch_size"),
                          (dict(num_microbatches=3), "NUM_MICROBATCHES")):
    config = tl.train_config(tmp_path / flag, batch_size=8, **overrides)
    with pytest.raises(shape_checks.ShapeError, match=flag):
      train_lib.build_and_train(config, method=tl.model_tuning(), model_config=tl.tiny_config(),
                    optimizer=tl.adam(), initial_checkpoint_path=str(missing),
                    mesh=_Mesh(2), batches_fn=tl.fixed_batches(8))


def test_mesh_must_fit_the_devices():
  with pytest.raises(ValueError, match="partitioning.make_mesh.model_parallel"):
    partitioning.make_mesh(3, devices=[object()] * 8)
