"""Trainer: T5X loss, trainable-only gradients, resume after SIGTERM, MODEL_DIR guard."""
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trainer_testlib as tl
from prompt_tuning import partitioning
from prompt_tuning import train as train_lib
from prompt_tuning import params as params_lib
from prompt_tuning.training import losses, trainer
from prompt_tuning.run_dir import train_state
from prompt_tuning.params import flatten


def test_loss_is_t5x_cross_entropy_plus_z_loss_per_real_target_token():
  rng = np.random.RandomState(0)
  logits = rng.randn(2, 3, 7).astype(np.float32)
  targets = np.array([[1, 4, 0], [2, 6, 5]])
  weights = (targets > 0).astype(np.float32)
  log_z = np.log(np.exp(logits).sum(-1))
  ce = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  expected = ((ce + 1e-4 * log_z ** 2) * weights).sum() / weights.sum()
  loss, z, n = losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                             jnp.asarray(weights), z_loss=1e-4)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(z, (1e-4 * log_z ** 2 * weights).sum() / 5, rtol=1e-6)
  assert float(n) == 5.0
  summed, _, _ = losses.weighted_cross_entropy(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), z_loss=1e-4,
      loss_normalizing_factor=None)
  np.testing.assert_allclose(summed, expected * 5, rtol=1e-6)
  with pytest.raises(ValueError, match="NUM_REAL_TARGET_TOKENS"):
    losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), None,
                                  loss_normalizing_factor="PER_SEQUENCE")


def test_train_step_updates_only_trainable_and_keeps_no_frozen_optimizer_state():
  method = tl.partial_tuning()
  config = tl.tiny_config(dropout_rate=0.0)
  model = method.build(config)
  from prompt_tuning import building  # pylint: disable=g-import-not-at-top
  _, params, _ = building.build_params(method, config, None,
                                             jax.random.PRNGKey(0))
  trainable, frozen = params_lib.split(params, method.trainable)
  assert set(flatten(trainable)) == {
      f"decoder/layers_0/mlp/{k}/kernel" for k in ("wi_0", "wi_1", "wo")}
  optimizer = tl.adam(1e-2)
  state = trainer.TrainState(jnp.zeros((), jnp.int32), trainable,
                             optimizer.init(trainable))
  # Optimizer slots exist only for the trainable arrays.
  slot_shapes = {x.shape for x in jax.tree_util.tree_leaves(state.opt_state)
                 if np.ndim(x)}
  assert slot_shapes <= {x.shape for x in flatten(trainable).values()}
  batch = next(tl.fixed_batches(4)(0))
  step = jax.jit(lambda s, f, b, r: trainer.train_step(
      s, f, b, r, loss_fn=losses.LossFn(model, 1e-4, losses.NUM_REAL_TARGET_TOKENS, False), optimizer=optimizer))
  rng = jax.random.PRNGKey(1)
  first_losses = []
  for _ in range(3):
    state, metrics = step(state, frozen, batch, rng)
    first_losses.append(float(metrics["loss"]))
  assert int(state.step) == 3
  assert first_losses[-1] < first_losses[0]
  for path, value in flatten(state.trainable).items():
    assert not np.allclose(value, flatten(trainable)[path]), path
  # The loss reported equals the model loss recomputed on the merged tree.
  logits = model.apply({"params": params_lib.merge(state.trainable, frozen)},
                       batch["encoder_input_tokens"], batch["decoder_input_tokens"])
  loss, _, _ = losses.weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                             batch["decoder_loss_weights"])
  _, metrics = step(state, frozen, batch, rng)
  np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-5)


def test_data_order_is_seeded_resumable_and_sharded_per_host():
  from prompt_tuning import data  # pylint: disable=g-import-not-at-top
  tl.register_task()
  rows = lambda it, n: [tuple(r) for _ in range(n)
                        for r in next(it)["encoder_input_tokens"]]
  batches = lambda **kw: data.train_batches(tl.TASK, tl.FEATURE_LENGTHS, 4, **kw)
  first = rows(batches(seed=3), 6)
  assert first == rows(batches(seed=3), 6)
  assert first != rows(batches(seed=4), 6)
  assert rows(batches(seed=3, start_batch=2), 4) == first[8:]
  # Two hosts: disjoint halves of the 40 training examples, together all of them.
  # (seqio repeats before shuffling, so look at a few epochs.)
  shards = [set(rows(batches(seed=3, shard_index=i, num_shards=2), 20)) for i in (0, 1)]
  assert len(shards[0]) == len(shards[1]) == 20 and not shards[0] & shards[1]
  assert shards[0] | shards[1] == set(rows(batches(seed=3), 40))


def _run(model_dir, batches_fn=None, **overrides):
  return train_lib.build_and_train(tl.train_config(model_dir, **overrides),
                       method=tl.partial_tuning(), model_config=tl.tiny_config(),
                       optimizer=tl.adam(), batches_fn=batches_fn)


def test_resume_after_sigterm_is_bit_identical_and_config_change_is_refused(tmp_path):
  tl.register_task()
  steps = 4
  full = _run(tmp_path / "full", train_steps=steps)
  assert full.step == steps and not full.preempted

  # Interrupted run: SIGTERM arrives while step 2's batch is read; the step finishes,
  # a checkpoint is written and the loop stops.
  def interrupting(start):
    batches = train_lib._task_batches(  # pylint: disable=protected-access
        start, config=tl.train_config(tmp_path / "resumed", train_steps=steps),
        mesh=partitioning.make_mesh())
    for i, batch in enumerate(batches):
      if start + i == 1:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  first = _run(tmp_path / "resumed", batches_fn=interrupting, train_steps=steps)
  assert first.preempted and first.step == 2
  checkpointer = train_state.StateCheckpointer(str(tmp_path / "resumed"))
  assert checkpointer.latest_step() == 2
  checkpointer.close()
  assert (tmp_path / "resumed" / "numpy_checkpoints" / "checkpoint_2").is_dir()

  second = _run(tmp_path / "resumed", train_steps=steps)
  assert second.step == steps and sorted(second.losses) == [3, 4]
  for s in (3, 4):
    assert second.losses[s] == full.losses[s]
  for path, value in flatten(full.trainable).items():
    np.testing.assert_array_equal(flatten(second.trainable)[path], value, err_msg=path)

  # The same MODEL_DIR with another seed is refused, naming the field and the fix.
  with pytest.raises(ValueError, match=r"different configuration(.|\n)*seed"
                     r"(.|\n)*To resume that run"):
    _run(tmp_path / "resumed", train_steps=steps, seed=1)
  record = json.loads((tmp_path / "resumed" / "config.json").read_text())
  assert record["method"] == "decoder_mlp" and record["seed"] == 0
  assert record["trainable"] == [r"decoder/.*/mlp/.*"]


def test_config_json_of_a_run_that_never_saved_is_replaced(tmp_path):
  record = {"method": "prompt", "seed": 0, "task": "t"}
  train_state.check_or_write_run_config(str(tmp_path), record)
  # No checkpoint yet (e.g. the first attempt failed while loading): replaced.
  train_state.check_or_write_run_config(str(tmp_path), dict(record, seed=1))
  assert json.loads((tmp_path / "config.json").read_text())["seed"] == 1
  (tmp_path / "checkpoint_10").mkdir()
  with pytest.raises(ValueError, match="seed: 2 now vs 1 in config.json"):
    train_state.check_or_write_run_config(str(tmp_path), dict(record, seed=2))
  train_state.check_or_write_run_config(str(tmp_path), dict(record, seed=1))


def test_eval_loads_a_model_tuning_run_from_its_orbax_checkpoint(tmp_path):
  from prompt_tuning import eval as eval_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods.base import Method  # pylint: disable=g-import-not-at-top
  method = Method(name="model", trainable=(".*",), export=lambda params: {})
  result = train_lib.build_and_train(tl.train_config(tmp_path, train_steps=1),
                         method=method, model_config=tl.tiny_config(),
                         optimizer=tl.adam(), batches_fn=tl.fixed_batches(8))
  # Nothing was exported as .npy, so eval reads the trained tree from orbax.
  assert not list((tmp_path / "numpy_checkpoints" / "checkpoint_1").iterdir())
  _, params, _, source = eval_lib.load_trained(method, None, None,
                                               model_dir=str(tmp_path))
  assert source.endswith("checkpoint_1")
  for path, value in flatten(result.trainable).items():
    np.testing.assert_array_equal(np.asarray(flatten(params)[path]), value,
                                  err_msg=path)


def test_run_record_says_where_the_prompt_goes(tmp_path):
  # prompt_tuning.infer serves a MODEL_DIR's prompt with this combination.
  from prompt_tuning.methods.prompt import prompt_tuning  # pylint: disable=g-import-not-at-top
  config = tl.train_config(tmp_path)
  for combine in ("prefix", "suffix", "after_bos"):
    record = trainer.run_record(config, prompt_tuning(length=2, combine=combine),
                                tl.tiny_config(), None)
    assert record["prompt_combine"] == combine
  assert trainer.run_record(config, tl.model_tuning(), tl.tiny_config(),
                            None)["prompt_combine"] is None
