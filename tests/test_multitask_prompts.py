"""Multi-task prompts: shared + task composition, routing in the data, per-task bests,
and the exported bank served by task name."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import methods_testlib as mt
from prompt_tuning import infer
from prompt_tuning.methods import multitask
from prompt_tuning.methods import prompt as prompt_lib
from prompt_tuning.models.t5 import Transformer
from prompt_tuning.params import flatten, with_params, without_params
from prompt_tuning.run_dir import layout
from prompt_tuning.training import evaluation, task_bests

NAMES = ("task_a", "task_b", "task_c")


def _logits(module, values, enc, dec, frozen=None, **kwargs):
  """Logits with `values` at their paths; the frozen weights are `frozen`'s (drawn
  for this model when None), so that two modules share one frozen model."""
  config = mt.one_layer_config()
  model = Transformer(config, prompt=module)
  params = mt.random_params(model, enc, dec) if frozen is None else without_params(
      frozen, "encoder/prompt")
  params = with_params(params, values)
  return model.apply({"params": params}, enc, dec, **kwargs), params


@pytest.mark.parametrize("shared,shared_length", [("none", None), ("add", None),
                                                   ("concat", 2)])
def test_each_row_sees_its_composed_prompt_as_a_single_prompt(shared, shared_length):
  """Example b with prompt_index k gives the logits of a plain prompt equal to task
  k's composed prompt (shared + task, [shared, task] or the task prompt alone)."""
  enc, dec, _ = mt.batch(size=3)
  width = mt.one_layer_config().emb_dim
  rng = np.random.RandomState(0)
  tasks = rng.normal(size=(3, 4, width)).astype(np.float32)
  values = {multitask.TASKS_PATH: tasks}
  if shared != "none":
    values[multitask.SHARED_PATH] = rng.normal(size=(shared_length or 4, width)
                                               ).astype(np.float32)
  module = multitask.MultiTaskPrompt(names=NAMES, length=4, shared=shared,
                                     shared_length=shared_length)
  index = jnp.asarray([2, 0, 2], jnp.int32)
  mixed, params = _logits(module, values, enc, dec, prompt_index=index)
  composed = multitask.composed_bank(params, shared)
  expected_length = 4 + (shared_length if shared == "concat" else 0)
  assert composed.shape == (3, expected_length, width)
  if shared == "add":
    np.testing.assert_allclose(composed, tasks + values[multitask.SHARED_PATH][None])
  if shared == "concat":
    np.testing.assert_allclose(composed[1, :2], values[multitask.SHARED_PATH])
    np.testing.assert_allclose(composed[1, 2:], tasks[1])
  for b, k in enumerate([2, 0, 2]):
    single = prompt_lib.Prompt(length=expected_length)
    alone, _ = _logits(single, {prompt_lib.PROMPT_PATH: composed[k]}, enc[b:b + 1],
                       dec[b:b + 1], frozen=params)
    np.testing.assert_allclose(mixed[b:b + 1], alone, atol=1e-5)


def test_parameters_have_logical_axes_and_gradients_stay_in_their_rows():
  enc, dec, tgt = mt.batch(size=2)
  module = multitask.MultiTaskPrompt(names=NAMES, length=2, shared="add")
  model = Transformer(mt.one_layer_config(), prompt=module)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), enc, dec)
  axes = {k: v.names for k, v in flatten(variables["params"]).items()
          if hasattr(v, "names")}
  assert axes[multitask.TASKS_PATH] == ("prompts", "prompt", "embed")
  assert axes[multitask.SHARED_PATH] == ("prompt", "embed")
  params = mt.random_params(model, enc, dec)

  def loss(p):
    logits = model.apply({"params": p}, enc, dec,
                         prompt_index=jnp.asarray([0, 2], jnp.int32))
    return jnp.sum(logits * tgt[..., None])

  grads = flatten(jax.jit(jax.grad(loss))(params))
  rows = np.abs(np.asarray(grads[multitask.TASKS_PATH])).sum(axis=(1, 2))
  assert rows[0] > 0 and rows[2] > 0 and rows[1] == 0  # task_b had no example
  assert np.abs(np.asarray(grads[multitask.SHARED_PATH])).sum() > 0


def test_bad_settings_are_refused_with_the_fix():
  with pytest.raises(ValueError, match="one length"):
    multitask.MultiTaskPrompt(names=NAMES, length=3, shared="add", shared_length=2)
  with pytest.raises(ValueError, match="shared-prompt mode"):
    multitask.MultiTaskPrompt(names=NAMES, length=3, shared="mul")
  with pytest.raises(ValueError, match="distinct name"):
    multitask.MultiTaskPrompt(names=("a", "a"), length=3)
  with pytest.raises(ValueError, match="2 initializers for 3 tasks"):
    multitask.multitask_prompt_tuning(NAMES, 3, initializer=[None, None])
  enc, dec, _ = mt.batch(size=2)
  module = multitask.MultiTaskPrompt(names=NAMES, length=2)
  model = Transformer(mt.one_layer_config(), prompt=module)
  params = mt.random_params(model, enc, dec)
  with pytest.raises(ValueError, match="prompt_index"):
    model.apply({"params": params}, enc, dec)
  with pytest.raises(ValueError, match=r"in \[0, 3\)"):
    model.apply({"params": params}, enc, dec, prompt_index=jnp.asarray([0, 3]))


def test_initialization_per_task_and_add_starts_from_the_initializer():
  config = mt.one_layer_config()
  width = config.emb_dim
  fixed = [np.full((2, width), v, np.float32) for v in (1.0, 2.0, 3.0)]
  method = multitask.multitask_prompt_tuning(
      NAMES, 2, initializer=[lambda r, s, e, v=v: v for v in fixed])
  module = method.prompt
  enc, dec, _ = mt.batch(size=1)
  params = mt.random_params(Transformer(config, prompt=module), enc, dec)
  tasks = flatten(method.initialize(jax.random.PRNGKey(0), params, config))[
      multitask.TASKS_PATH]
  np.testing.assert_allclose(tasks, np.stack(fixed))
  added = multitask.multitask_prompt_tuning(NAMES, 2, shared="add",
                                            initializer=lambda r, s, e: fixed[1])
  params = mt.random_params(Transformer(config, prompt=added.prompt), enc, dec)
  start = added.initialize(jax.random.PRNGKey(0), params, config)
  np.testing.assert_allclose(added.exported(start)[multitask.EXPORT_NAME],
                             np.stack([fixed[1]] * 3))


# ------------------------------------------------------------------ per-task bests


def _result(accuracy):
  return evaluation.TaskResult({"loss": 1.0, "accuracy": accuracy}, [], [], [])


def test_each_task_keeps_its_own_best_row_and_the_bank_mixes_steps(tmp_path):
  names = ("task_a", "task_b")
  banks = {step: np.full((2, 3, 4), step, np.float32) for step in (10, 20)}

  def update(step, a, b):
    return task_bests.update(step, {"task_a": _result(a), "task_b": _result(b)},
                             names, multitask.EXPORT_NAME,
                             lambda: {multitask.EXPORT_NAME: banks[step]},
                             str(tmp_path), None, None)

  update(10, 50.0, 80.0)
  record = update(20, 60.0, 70.0)  # task_a improves, task_b does not
  assert record["tasks"]["task_a"]["step"] == 20
  assert record["tasks"]["task_b"]["step"] == 10
  assert record["value"] == pytest.approx(70.0)
  bank = np.load(tmp_path / "best" / f"{multitask.EXPORT_NAME}.npy")
  np.testing.assert_array_equal(bank[0], banks[20][0])
  np.testing.assert_array_equal(bank[1], banks[10][1])
  row_b = np.load(tmp_path / "best" / "task_b" / "encoder.prompt.prompt.npy")
  np.testing.assert_array_equal(row_b, banks[10][1])
  saved = json.loads((tmp_path / "best" / "task_b" / "best.json").read_text())
  assert saved == {"step": 10, "metric": "accuracy", "value": 80.0, "mode": "max"}
  assert layout.read_best_record(tmp_path)["step"] == 20
  # Nothing improves: nothing is rewritten, the record stays.
  assert update(20, 10.0, 10.0)["tasks"]["task_a"]["value"] == 60.0


def test_infer_serves_the_bank_rows_by_task_name(tmp_path):
  bank = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
  (tmp_path / "best").mkdir()
  np.save(tmp_path / "best" / f"{multitask.EXPORT_NAME}.npy", bank)
  record = {"method": multitask.NAME, "prompt_names": ["task_a", "task_b"]}
  rows, path = infer.multitask_rows(tmp_path, record)
  assert list(rows) == ["task_a", "task_b"]
  np.testing.assert_array_equal(rows["task_b"], bank[1])
  assert path.name == f"{multitask.EXPORT_NAME}.npy"
  with pytest.raises(infer.InferError, match=r"expected \[K, P, H\]"):
    infer.multitask_rows(tmp_path, dict(record, prompt_names=["a", "b", "c"]))


def test_microbatches_keep_each_row_with_its_prompt_index():
  """Accumulating 2 microbatches gives the whole batch's update: prompt_index is
  split with the other features, so no row meets another task's prompt."""
  import optax  # pylint: disable=g-import-not-at-top
  from prompt_tuning import params as params_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import losses, trainer  # pylint: disable=g-import-not-at-top
  enc, dec, tgt = mt.batch(size=4)
  method = multitask.multitask_prompt_tuning(NAMES, 2)
  model = Transformer(mt.one_layer_config(), prompt=method.prompt)
  params = mt.random_params(model, enc, dec)
  trainable, frozen = params_lib.split(params, method.trainable)
  batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
           "decoder_target_tokens": tgt,
           "decoder_loss_weights": (tgt > 0).astype(jnp.int32),
           "prompt_index": jnp.asarray([2, 0, 1, 2], jnp.int32)}
  optimizer = optax.sgd(1.0)
  state = trainer.TrainState(jnp.zeros((), jnp.int32), trainable,
                             optimizer.init(trainable))
  loss_fn = losses.LossFn(model, enable_dropout=False)
  outs = [jax.jit(functools.partial(trainer.train_step, loss_fn=loss_fn,
                                    optimizer=optimizer, num_microbatches=m))(
                                        state, frozen, batch, jax.random.PRNGKey(0))
          for m in (None, 2)]
  whole, split = (flatten(o[0].trainable)[multitask.TASKS_PATH] for o in outs)
  assert not np.allclose(whole, flatten(trainable)[multitask.TASKS_PATH])
  np.testing.assert_allclose(split, whole, atol=1e-5)
  np.testing.assert_allclose(outs[1][1]["loss"], outs[0][1]["loss"], rtol=1e-5)


@pytest.mark.parametrize("shared", ["add", "concat"])
def test_the_exported_bank_alone_gives_the_trained_outputs(shared):
  """What eval loads from an export: the shared='none' method of the composed
  length, with the shared prompt folded into every row."""
  enc, dec, _ = mt.batch(size=2)
  method = multitask.multitask_prompt_tuning(NAMES, 2, shared=shared)
  model = Transformer(mt.one_layer_config(), prompt=method.prompt)
  params = mt.random_params(model, enc, dec)
  index = jnp.asarray([1, 2], jnp.int32)
  served = method.inference_method()
  assert served.prompt.shared == "none"
  folded = method.inference_params(params)
  assert multitask.SHARED_PATH not in flatten(folded)
  np.testing.assert_allclose(flatten(folded)[multitask.TASKS_PATH],
                             method.exported(params)[multitask.EXPORT_NAME])
  np.testing.assert_allclose(
      Transformer(mt.one_layer_config(), prompt=served.prompt).apply(
          {"params": folded}, enc, dec, prompt_index=index),
      model.apply({"params": params}, enc, dec, prompt_index=index), atol=1e-5)
