"""Layer remat and bfloat16 frozen weights change memory, not the math.

Remat ('minimal', 'full') gives the plain model's loss and gradients (float32, 1e-5),
with the prompt and prefix hooks (one method with both, every parameter trained); it really saves fewer residuals. Frozen weights
in bfloat16 (`T5Config.frozen_dtype`) are cast at load, the trainable ones stay
float32, and the loss stays within bfloat16 tolerance of the float32 model.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import ad_checkpoint

import methods_testlib as ml
from prompt_tuning import building
from prompt_tuning.methods import prefix, prompt
from prompt_tuning.methods.base import Method
from prompt_tuning.models import decoding
from prompt_tuning.models.config import T5Config
from prompt_tuning.params import flatten, unflatten

METHODS = {
    "plain": lambda: Method(name="model", trainable=(".*",)),
    "prompt": lambda: prompt.prompt_tuning(length=3),
    "prefix": lambda: prefix.prefix_tuning(length=2, hidden_dim=8),
}


def _all_hooks() -> Method:
  """The prompt (input) and prefix (every layer, cross-attention too) hooks at once,
  with every parameter trained: one compile checks the gradients of the frozen
  weights, the prompt and the prefix network."""
  return Method(name="model", prompt=prompt.prompt_tuning(length=3).prompt,
                prefix=prefix.prefix_tuning(length=2, hidden_dim=8,
                                            cross_attention=True).prefix,
                trainable=(".*",))


def _params(method, config):
  _, params, _ = building.build_params(method, config, None,
                                             jax.random.PRNGKey(0))
  return params


def _loss_and_grads(method, config, params, dropout: bool):
  """Loss and gradients w.r.t. the method's trainable leaves (all for 'plain')."""
  enc, dec, tgt = ml.batch(size=3, inputs=9, targets=4)
  model = method.build(config)
  flat = flatten(params)
  trainable = {k: v for k, v in flat.items() if method.is_trainable(k)}
  frozen = {k: v for k, v in flat.items() if not method.is_trainable(k)}

  def loss(t):
    return ml.loss(model, unflatten({**frozen, **t}), enc, dec, tgt,
                   enable_dropout=dropout, rngs={"dropout": jax.random.PRNGKey(3)})

  return jax.jit(jax.value_and_grad(loss))(trainable), loss, trainable


def test_remat_gives_the_plain_loss_and_gradients():
  method = _all_hooks()
  plain_config = ml.one_layer_config().replace(dropout_rate=0.1)
  params = _params(method, plain_config)
  (loss, grads), plain_fn, trainable = _loss_and_grads(method, plain_config, params,
                                                       dropout=True)
  plain_saved = len(ad_checkpoint.saved_residuals(plain_fn, trainable))
  for policy in ("minimal", "full"):
    config = plain_config.replace(remat_policy=policy)
    (r_loss, r_grads), fn, _ = _loss_and_grads(method, config, params, dropout=True)
    np.testing.assert_allclose(r_loss, loss, rtol=1e-5, atol=1e-6)
    assert set(r_grads) == set(grads)
    for path in grads:
      np.testing.assert_allclose(r_grads[path], grads[path], rtol=1e-5, atol=1e-6,
                                 err_msg=f"{policy}: {path}")
    # Remat must actually keep fewer values for the backward pass.
    assert len(ad_checkpoint.saved_residuals(fn, trainable)) < plain_saved, policy


def test_remat_policy_is_checked_and_recorded():
  with pytest.raises(ValueError, match="remat_policy='half'.*'none', 'minimal', 'full'"):
    ml.tiny_config(remat_policy="half")
  config = ml.tiny_config(remat_policy="full", frozen_dtype="bfloat16")
  assert jnp.dtype(config.frozen_dtype) == jnp.bfloat16
  record = config.to_dict()
  assert record["remat_policy"] == "full" and record["frozen_dtype"] == "bfloat16"
  assert T5Config.from_dict(record) == config
  # Defaults stay out of config.json, so runs recorded before these fields match.
  assert "remat_policy" not in ml.tiny_config().to_dict()
  assert "frozen_dtype" not in ml.tiny_config().to_dict()


def test_remat_model_still_decodes_incrementally():
  enc, _, _ = ml.batch(size=2, inputs=7)
  method = METHODS["plain"]()
  params = _params(method, ml.tiny_config())
  outs = []
  for policy in ("none", "full"):
    model = method.build(ml.tiny_config(remat_policy=policy))
    outs.append(np.asarray(decoding.greedy_decode(model, params, enc,
                                                  max_decode_length=5, eos_id=-1)))
  np.testing.assert_array_equal(outs[0], outs[1])


def test_bfloat16_frozen_weights_are_cast_at_load_and_train_in_float32():
  method = prompt.prompt_tuning(length=3)
  f32 = ml.tiny_config()
  bf16 = f32.replace(frozen_dtype="bfloat16")
  params32, params16 = _params(method, f32), _params(method, bf16)
  flat16 = flatten(params16)
  for path, value in flat16.items():
    want = np.float32 if method.is_trainable(path) else jnp.bfloat16
    assert value.dtype == want, (path, value.dtype)
  # The same values, rounded: bf16 frozen weights are the float32 ones cast.
  emb = "token_embedder/embedding"
  np.testing.assert_array_equal(flat16[emb],
                                flatten(params32)[emb].astype(jnp.bfloat16))
  (loss32, g32), _, _ = _loss_and_grads(method, f32, params32, dropout=False)
  (loss16, g16), _, _ = _loss_and_grads(method, bf16, params16, dropout=False)
  assert loss16 != loss32  # the rounding is real ...
  np.testing.assert_allclose(loss16, loss32, rtol=2e-2)  # ... and within bf16's
  for path in g32:
    assert g16[path].dtype == np.float32
    cos = np.sum(g16[path] * g32[path]) / (np.linalg.norm(g16[path]) *
                                           np.linalg.norm(g32[path]))
    assert cos > 0.99, (path, cos)
