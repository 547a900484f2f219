"""Multi-task prompt training: a jointly trained 2-task bank equals two single-task runs.

The joint run sees batches mixing both tasks' rows (each routed by `prompt_index`);
single-task run k sees exactly task k's rows of every batch, in the same order.
With a summed loss (loss_normalizing_factor=None), no dropout and an optimizer that
acts element by element (SGD, or Adafactor unfactored, without update clipping and
parameter scaling), task k's prompt gets the same gradients and updates in both.
"""
import numpy as np
import optax

import trainer_testlib as tl
from prompt_tuning import train as train_lib
from prompt_tuning.methods import multitask
from prompt_tuning.methods import prompt as prompt_lib
from prompt_tuning.params import flatten
from prompt_tuning.training import optim

LENGTH = 3
WIDTH = 16  # tl.tiny_config's emb_dim
# Which task each of the 4 rows of step s belongs to (2 rows each, in varying places).
ROUTES = [np.array([0, 1, 1, 0]), np.array([1, 1, 0, 0]), np.array([0, 0, 1, 1])]
STEPS = 3


def _fixed(values):
  return lambda rng, shape, embedding: np.asarray(values, np.float32)


def _initial():
  return np.random.RandomState(7).uniform(-0.5, 0.5, (2, LENGTH, WIDTH)).astype(
      np.float32)


def _joint_batches(start):
  base = tl.fixed_batches(4, seed=3)(start)
  for step, batch in enumerate(base, start):
    yield dict(batch, prompt_index=ROUTES[step % len(ROUTES)].astype(np.int32))


def _task_batches(task):
  def batches(start):
    for batch in _joint_batches(start):
      rows = batch.pop("prompt_index") == task
      yield {k: v[rows] for k, v in batch.items()}
  return batches


def _run(model_dir, method, batches_fn, batch_size, optimizer, normalizer):
  config = tl.train_config(model_dir, batch_size=batch_size, train_steps=STEPS,
                           loss_normalizing_factor=normalizer, enable_dropout=False)
  return train_lib.build_and_train(
      config, method=method, model_config=tl.tiny_config(dropout_rate=0.0),
      optimizer=optimizer, batches_fn=batches_fn)


def _joint_and_singles(tmp_path, optimizer, normalizer=None, tasks=(0, 1)):
  initial = _initial()
  joint_method = multitask.multitask_prompt_tuning(
      names=("task_a", "task_b"), length=LENGTH,
      initializer=[_fixed(initial[0]), _fixed(initial[1])])
  joint = _run(tmp_path / "joint", joint_method, _joint_batches, 4, optimizer,
               normalizer)
  bank = flatten(joint.trainable)[multitask.TASKS_PATH]
  singles = []
  for task in tasks:
    method = prompt_lib.prompt_tuning(length=LENGTH, initializer=_fixed(initial[task]))
    result = _run(tmp_path / f"single_{task}", method, _task_batches(task), 2,
                  optimizer, normalizer)
    singles.append(flatten(result.trainable)[prompt_lib.PROMPT_PATH])
  return initial, bank, singles


def test_joint_bank_equals_single_task_runs(tmp_path):
  # Adafactor unfactored and unclipped acts element by element, like SGD (the
  # simpler case it contains), with the paper's learning rate and decay.
  optimizer = optim.adafactor(learning_rate=0.3, decay_rate=0.8, factored=False,
                              multiply_by_parameter_scale=False,
                              clipping_threshold=None, weight_decay_rate=1e-5)
  initial, bank, singles = _joint_and_singles(tmp_path, optimizer)
  assert bank.shape == (2, LENGTH, WIDTH)
  for task in (0, 1):
    assert not np.allclose(bank[task], initial[task], atol=1e-3)  # it trained
    np.testing.assert_allclose(bank[task], singles[task], atol=1e-5, rtol=0)


def test_token_mean_normalization_couples_the_tasks(tmp_path):
  """The control: dividing by the joint batch's token count (the default) gives
  each task a different share than its own run, so the runs part ways."""
  _, bank, singles = _joint_and_singles(tmp_path, optax.sgd(0.5),
                                        normalizer="NUM_REAL_TARGET_TOKENS", tasks=(0,))
  assert not np.allclose(bank[0], singles[0], atol=1e-4)
