"""Gradient accumulation: M microbatches in one compiled step give the whole batch's
update, whatever the padding of each microbatch."""
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import trainer_testlib as tl
from prompt_tuning import building
from prompt_tuning import params as params_lib
from prompt_tuning.training import losses, trainer
from prompt_tuning.methods import prompt
from prompt_tuning.params import flatten


def _setup(method):
  config = tl.tiny_config(dropout_rate=0.1)
  _, params, _ = building.build_params(method, config, None,
                                             jax.random.PRNGKey(0))
  trainable, frozen = params_lib.split(params, method.trainable)
  return method.build(config), trainable, frozen


def _uneven_batch(size=8):
  """Rows with very different numbers of real target tokens."""
  batch = next(tl.fixed_batches(size)(0))
  weights = np.ones_like(batch["decoder_loss_weights"])
  for row in range(size):
    weights[row, 1 + row % 5:] = 0  # 1 .. 5 real tokens, varying by row
  batch["decoder_loss_weights"] = weights
  batch["decoder_target_tokens"] = batch["decoder_target_tokens"] * weights
  return batch


_STEPS = {}


def _steps(model, optimizer, trainable, frozen, batch, num_microbatches, steps=2,
           normalizer=losses.NUM_REAL_TARGET_TOKENS, dropout=False):
  key = (model, optimizer, num_microbatches, normalizer, dropout)
  if key not in _STEPS:  # compile each variant once
    loss_fn = losses.LossFn(model, z_loss=1e-4, loss_normalizing_factor=normalizer,
                            enable_dropout=dropout)
    _STEPS[key] = jax.jit(lambda s, f, b, r: trainer.train_step(
        s, f, b, r, loss_fn=loss_fn, optimizer=optimizer,
        num_microbatches=num_microbatches))
  step = _STEPS[key]
  state = trainer.TrainState(jnp.zeros((), jnp.int32), trainable,
                             optimizer.init(trainable))
  history = []
  for _ in range(steps):
    state, metrics = step(state, frozen, batch, jax.random.PRNGKey(3))
    history.append({k: float(v) for k, v in metrics.items()})
  return state, history


SGD = optax.sgd(0.5)  # the update is the gradient itself: nothing hides it


@pytest.mark.parametrize("method,normalizer,counts", [
    (tl.model_tuning(), losses.NUM_REAL_TARGET_TOKENS, (2, 4)),
    (prompt.prompt_tuning(length=3), losses.NUM_REAL_TARGET_TOKENS, (4,)),
    (tl.model_tuning(), 7.0, (2,)),
])
def test_microbatches_give_the_whole_batch_update(method, normalizer, counts):
  model, trainable, frozen = _setup(method)
  batch = _uneven_batch()
  optimizer = SGD
  whole, whole_metrics = _steps(model, optimizer, trainable, frozen, batch, None,
                                normalizer=normalizer)
  for m in counts:
    parts, part_metrics = _steps(model, optimizer, trainable, frozen, batch, m,
                                 normalizer=normalizer)
    for path, value in flatten(whole.trainable).items():
      np.testing.assert_allclose(flatten(parts.trainable)[path], value, rtol=1e-6,
                                 atol=1e-6, err_msg=f"{m} microbatches: {path}")
    for a, b in zip(whole_metrics, part_metrics):
      for key in ("loss", "z_loss", "weight_sum", "grad_norm"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, err_msg=key)
  moved = max(float(np.max(np.abs(flatten(whole.trainable)[p] - v)))
              for p, v in flatten(trainable).items())
  assert moved > 1e-3  # the steps changed the parameters


def test_per_microbatch_normalization_would_differ():
  """The uneven batch makes the test sensitive: averaging each microbatch's own
  token-normalized loss (a common bug) gives a different loss than the batch's."""
  model, trainable, frozen = _setup(tl.model_tuning())
  params = {"params": params_lib.merge(trainable, frozen)}

  @jax.jit
  def loss(b):
    logits = model.apply(params, b["encoder_input_tokens"], b["decoder_input_tokens"])
    return losses.weighted_cross_entropy(logits, b["decoder_target_tokens"],
                                         b["decoder_loss_weights"])[0]
  batch = _uneven_batch()
  parts = trainer.split_microbatches(dict(batch), 4)
  whole = float(loss(batch))
  naive = np.mean([float(loss({k: v[i] for k, v in parts.items()}))
                   for i in range(4)])
  assert abs(naive - whole) > 1e-3


def test_split_microbatches_takes_rows_round_robin():
  batch = {"x": np.arange(8)[:, None] * np.ones((1, 3), int)}
  parts = trainer.split_microbatches(batch, 4)
  assert parts["x"].shape == (4, 2, 3)
  assert parts["x"][:, :, 0].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_dropout_differs_per_microbatch_and_stays_deterministic():
  model, trainable, frozen = _setup(tl.model_tuning())
  batch = next(tl.fixed_batches(8)(0))
  # Two identical halves: with the same dropout mask in both microbatches their
  # gradients would be equal; folding the microbatch index in makes them differ.
  batch = {k: np.repeat(v[:4], 2, axis=0) for k, v in batch.items()}
  parts = trainer.split_microbatches(batch, 2)
  np.testing.assert_array_equal(parts["encoder_input_tokens"][0],
                                parts["encoder_input_tokens"][1])
  optimizer = SGD
  a, _ = _steps(model, optimizer, trainable, frozen, batch, 2, steps=1, dropout=True)
  b, _ = _steps(model, optimizer, trainable, frozen, batch, 2, steps=1, dropout=True)
  for path, value in flatten(a.trainable).items():
    np.testing.assert_array_equal(flatten(b.trainable)[path], value)

  # Per-microbatch keys: the two (identical) microbatches' dropout gradients differ.
  @jax.jit
  def grads(part, rng):
    def loss(t):
      logits = model.apply({"params": params_lib.merge(t, frozen)},
                           part["encoder_input_tokens"], part["decoder_input_tokens"],
                           enable_dropout=True, rngs={"dropout": rng})
      return losses.weighted_cross_entropy(logits, part["decoder_target_tokens"],
                                           part["decoder_loss_weights"])[0]
    return jax.grad(loss)(trainable)
  step_rng = jax.random.fold_in(jax.random.PRNGKey(3), 0)
  g0, g1 = (flatten(grads({k: v[i] for k, v in parts.items()},
                          jax.random.fold_in(step_rng, i))) for i in range(2))
  assert any(not np.allclose(g0[p], g1[p]) for p in g0)
  # ... and their sum is the step's update (SGD, lr 0.5).
  for path, value in flatten(trainable).items():
    np.testing.assert_allclose(flatten(a.trainable)[path],
                               value - 0.5 * (g0[path] + g1[path]) / 2, rtol=1e-5,
                               atol=1e-6, err_msg=path)


def test_num_microbatches_is_gin_bindable(tmp_path):
  from prompt_tuning import configurables  # pylint: disable=g-import-not-at-top  (registers)
  del configurables
  gin.add_config_file_search_path(str(tl.__file__).rsplit("/tests/", 1)[0] + "/configs")
  gin.parse_config_files_and_bindings(
      ["runs/prompt_finetune.gin"],
      ["NUM_MICROBATCHES = 4", f"MODEL_DIR = '{tmp_path}'",
       "MIXTURE_OR_TASK_NAME = 'x'", "TASK_FEATURE_LENGTHS = {'inputs': 8}"],
      finalize_config=False, skip_unknown=True)
  config = gin.get_configurable("TrainConfig")()
  assert config.num_microbatches == 4
