"""Trainable subtrees, optimizer state sizes, frozen parameters, T5X Adafactor parity."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning import params as params_lib
from prompt_tuning.training import optim
from prompt_tuning.methods.baselines import model_tuning, prompt_design
from prompt_tuning.methods.lopa import lopa
from prompt_tuning.methods.prefix import prefix_tuning
from prompt_tuning.methods.prompt import prompt_tuning

from methods_testlib import (abstract_params, batch, loss, one_layer_config, random_params,
                             tiny_config)

# ---------------------------------------------------------------- split / merge


def _params():
  model = prompt_tuning(length=3).build(tiny_config())
  enc, dec, _ = batch()
  return random_params(model, enc, dec)


def test_split_and_merge_round_trip():
  params = _params()
  trainable, frozen = params_lib.split(params, prompt_tuning(length=3).trainable)
  assert list(params_lib.flatten(trainable)) == ["encoder/prompt/prompt"]
  frozen_paths = params_lib.flatten(frozen)
  assert "token_embedder/embedding" in frozen_paths and len(frozen_paths) > 20
  merged = params_lib.merge(trainable, frozen)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  for path, value in params_lib.flatten(params).items():
    assert params_lib.get_param(merged, path) is value


def test_split_with_regexes_that_match_nothing_names_them():
  with pytest.raises(ValueError, match=r"decoder/nothing/\.\*"):
    params_lib.split(_params(), [r"decoder/nothing/.*"])
  with pytest.raises(ValueError, match="list"):
    params_lib.split(_params(), r".*/prompt/.*")


def test_merge_refuses_overlap():
  with pytest.raises(ValueError, match="both"):
    params_lib.merge({"a/b": 1}, {"a/b": 2})


def test_trainable_regexes_default_to_the_method_and_can_be_overridden():
  method = prompt_tuning(length=3)
  assert optim.trainable_regexes(method) == (r".*/prompt/.*",)
  assert optim.trainable_regexes(method, [r"decoder/.*"]) == (r"decoder/.*",)
  trainable, _ = params_lib.split(_params(), optim.trainable_regexes(
      method, [r".*/prompt/.*", r"decoder/decoder_norm/.*"]))
  assert sorted(params_lib.flatten(trainable)) == ["decoder/decoder_norm/scale", "encoder/prompt/prompt"]


def test_baselines_train_everything_or_nothing():
  params = _params()
  trainable, frozen = params_lib.split(params, model_tuning().trainable)
  assert not frozen and len(params_lib.flatten(trainable)) == len(params_lib.flatten(params))
  trainable, frozen = params_lib.split(params, prompt_design().trainable)
  assert not trainable and len(params_lib.flatten(frozen)) == len(params_lib.flatten(params))


# ---------------------------------------------------------------- train steps


def _train(method, optimizer, steps=3, config=None):
  """Runs `steps` pure train steps; returns (initial params, final params, losses)."""
  config = config or one_layer_config()
  model = method.build(config)
  enc, dec, tgt = batch()
  params = random_params(model, enc, dec)
  trainable, frozen = params_lib.split(params, method.trainable)

  @jax.jit
  def step(trainable, frozen, opt_state):
    value, grads = jax.value_and_grad(
        lambda t: loss(model, params_lib.merge(t, frozen), enc, dec, tgt))(trainable)
    trainable, opt_state = optim.apply_gradients(optimizer, grads, opt_state, trainable)
    return trainable, opt_state, value

  opt_state = optimizer.init(trainable)
  losses = []
  for _ in range(steps):
    trainable, opt_state, value = step(trainable, frozen, opt_state)
    losses.append(float(value))
  return params, params_lib.merge(trainable, frozen), losses


@pytest.mark.parametrize("name, method, optimizer", [
    ("prompt", prompt_tuning(length=5), optim.adafactor_prompt_tuning()),
    ("prefix", prefix_tuning(length=2, hidden_dim=8), optim.adamw_prefix_tuning(1e-2)),
    ("lopa", lopa(length=3, rank=2, hidden_dim=8), optim.adamw_lopa(1e-2)),
])
def test_frozen_parameters_stay_bit_identical(name, method, optimizer):
  before, after, losses = _train(method, optimizer)
  changed = []
  for path, value in params_lib.flatten(before).items():
    new = np.asarray(params_lib.get_param(after, path))
    if method.is_trainable(path):
      changed.append(not np.array_equal(new, value))
    else:
      assert new.dtype == value.dtype and np.array_equal(new, np.asarray(value)), path
  assert changed and all(changed), name  # every trained parameter moved
  assert losses[-1] < losses[0], (name, losses)


# ---------------------------------------------------------------- state sizes


def _state_size(method, optimizer, config):
  model = method.build(config)
  enc, dec, _ = batch()
  trainable, frozen = params_lib.split(abstract_params(model, enc, dec), method.trainable)
  state = jax.eval_shape(optimizer.init, trainable)
  return (optim.num_elements(state), optim.num_elements(trainable),
          optim.num_elements(frozen))


SMALL = tiny_config()
LARGER = tiny_config(num_encoder_layers=4, num_decoder_layers=4, mlp_dim=256)


def test_prompt_tuning_state_is_order_p_times_h_whatever_the_model_size():
  sizes = [_state_size(prompt_tuning(length=20), optim.adafactor_prompt_tuning(), c)
           for c in (SMALL, LARGER)]
  (state_a, trained_a, frozen_a), (state_b, trained_b, frozen_b) = sizes
  assert frozen_b > 2 * frozen_a  # really two model sizes
  assert trained_a == trained_b == 20 * 32
  # The unfactored second moment [P, H] plus a step counter and two 1-element
  # placeholders of optax's factored-state tuple.
  assert state_a == state_b == 20 * 32 + 3


def test_adamw_state_is_two_moments_of_the_trainable_parameters():
  for method in (prefix_tuning(length=2, hidden_dim=8), lopa(length=3, rank=2)):
    state, trained, frozen = _state_size(method, optim.adamw_lopa(), LARGER)
    assert 2 * trained <= state <= 2 * trained + 4
    assert state < frozen


def test_model_tuning_state_covers_the_whole_model():
  state, trained, frozen = _state_size(model_tuning(), optim.adafactor_model_tuning(),
                                       SMALL)
  leaves = len(params_lib.flatten(abstract_params(model_tuning().build(SMALL), *batch()[:2])))
  # No tiny matrix has two dims >= 128, so every second moment is unfactored: one
  # value per parameter, two 1-element placeholders per leaf, one step counter.
  assert frozen == 0 and state == trained + 2 * leaves + 1


# ---------------------------------------------------------------- T5X parity


def _t5x_adafactor(param, grads, lr, decay_rate=0.8, step=0, weight_decay=None,
                   clip=1.0, scale_by_param=False, factored=False):
  """T5X `Adafactor.apply_param_gradient` for a 2-D parameter, transcribed in numpy
  (epsilon1 = 1e-30, epsilon2 = 1e-3, no momentum; factored dims (0, 1) as T5X's
  heuristic picks for a [rows >= cols] matrix)."""
  param = param.astype(np.float64)
  v = np.zeros_like(param)
  v_row = np.zeros(param.shape[0])
  v_col = np.zeros(param.shape[1])
  for g in grads:
    g = g.astype(np.float64)
    decay = 1.0 - (step + 1.0) ** -decay_rate
    scale = lr
    if scale_by_param:
      scale *= max(np.sqrt(np.mean(param * param)), 1e-3)
    g2 = g * g + 1e-30
    if factored:
      v_row = decay * v_row + (1 - decay) * g2.mean(axis=1)
      v_col = decay * v_col + (1 - decay) * g2.mean(axis=0)
      row = (v_row / v_row.mean()) ** -0.5
      y = g * row[:, None] * (v_col ** -0.5)[None, :]
    else:
      v = decay * v + (1 - decay) * g2
      y = g * v ** -0.5
    y = y / max(1.0, np.sqrt(np.mean(y * y)) / clip)
    param = (1.0 - (weight_decay or 0.0)) * param - scale * y
    step += 1
  return param


@pytest.mark.parametrize("checkpoint_step", [0, 1_100_000])
def test_prompt_tuning_adafactor_matches_t5x(checkpoint_step):
  rng = np.random.default_rng(0)
  param = rng.standard_normal((150, 64)).astype(np.float32)  # P=150 ≥ 128: unfactored
  grads = [rng.standard_normal(param.shape).astype(np.float32) * s for s in (1, 3, .1, 1)]
  tx = optim.adafactor_prompt_tuning(checkpoint_step=checkpoint_step)
  state = tx.init(jnp.asarray(param))
  current = jnp.asarray(param)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, current)
    current = optax.apply_updates(current, updates)
  expected = _t5x_adafactor(param, grads, lr=0.3, weight_decay=1e-5,
                            step=checkpoint_step)
  np.testing.assert_allclose(np.asarray(current), expected, rtol=2e-5, atol=2e-6)


def test_model_tuning_adafactor_matches_t5x_factored_with_parameter_scale():
  rng = np.random.default_rng(1)
  param = rng.standard_normal((256, 128)).astype(np.float32) * 0.05
  grads = [rng.standard_normal(param.shape).astype(np.float32) for _ in range(3)]
  tx = optim.adafactor_model_tuning()
  state = tx.init(jnp.asarray(param))
  current = jnp.asarray(param)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, current)
    current = optax.apply_updates(current, updates)
  expected = _t5x_adafactor(param, grads, lr=1e-3, scale_by_param=True, factored=True)
  np.testing.assert_allclose(np.asarray(current), expected, rtol=2e-5, atol=2e-7)


# ---------------------------------------------------------------- schedules


def test_linear_schedule_warms_up_then_decays_to_zero():
  schedule = optim.linear_schedule(1.0, warmup_steps=10, total_steps=30)
  values = [float(schedule(i)) for i in (0, 5, 10, 20, 30)]
  np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
  constant = optim.linear_schedule(2.0)
  assert float(constant(0)) == float(constant(10**6)) == 2.0
  with pytest.raises(ValueError, match="total_steps"):
    optim.linear_schedule(1.0, warmup_steps=10, total_steps=5)


def test_frozen_optimizer_never_moves():
  tx = optim.frozen()
  params = {"w": jnp.ones((2, 2))}
  updates, _ = tx.update(params, tx.init(params), params)
  np.testing.assert_array_equal(updates["w"], 0.0)
