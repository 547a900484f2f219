"""LoPA: the instance-aware prompt Z = Z_S ⊙ σ(u vᵀ), its features and variants."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import params as params_lib
from prompt_tuning.methods import initializers as inits
from prompt_tuning.methods.lopa import LopaPrompt, lopa

from methods_testlib import batch, one_layer_config, random_params, tiny_config

RNG = jax.random.PRNGKey(0)
P, R, HID = 4, 2, 8


def _prompt_from_params(own, features, variant="gate"):
  """The paper's formula written out in numpy from the module's parameters."""
  def head(p, x):
    return np.tanh(x @ p["hidden_kernel"] + p["hidden_bias"]) @ p["out_kernel"] + p["out_bias"]
  own = jax.tree.map(np.asarray, own)
  u = head(own["u_head"], features).reshape(-1, P, R)
  v = head(own["v_head"], features).reshape(-1, features.shape[-1], R)
  instance = np.einsum("bpr,bhr->bph", u, v)
  shared = np.broadcast_to(own["prompt"], instance.shape)
  return {"gate": shared / (1 + np.exp(-instance)), "add": shared + instance,
          "max": np.maximum(shared, instance),
          "concat": np.concatenate([shared, instance], axis=1)}[variant]


def test_parameters_paths_and_axes():
  method = lopa(length=P, rank=R, hidden_dim=HID)
  enc, dec, _ = batch()
  boxed = params_lib.flatten(jax.eval_shape(
      lambda: method.build(tiny_config()).init(RNG, enc, dec))["params"])
  own = {k: v for k, v in boxed.items() if method.is_trainable(k)}
  assert {k: v.value.shape for k, v in own.items()} == {
      "encoder/prompt/prompt": (P, 32),
      "encoder/prompt/u_head/hidden_kernel": (32, HID),
      "encoder/prompt/u_head/hidden_bias": (HID,),
      "encoder/prompt/u_head/out_kernel": (HID, P * R),
      "encoder/prompt/u_head/out_bias": (P * R,),
      "encoder/prompt/v_head/hidden_kernel": (32, HID),
      "encoder/prompt/v_head/hidden_bias": (HID,),
      "encoder/prompt/v_head/out_kernel": (HID, 32 * R),
      "encoder/prompt/v_head/out_bias": (32 * R,),
  }
  assert all(isinstance(v, nn.LogicallyPartitioned) for v in own.values())
  assert own["encoder/prompt/prompt"].names == ("prompt", "embed")
  assert params_lib.matches("encoder/prompt/prompt", [r".*/prompt/.*"])


@pytest.mark.parametrize("variant", ["gate", "add", "max", "concat"])
def test_prompt_matches_the_formula(variant):
  module = LopaPrompt(length=P, rank=R, hidden_dim=HID, features="embeddings",
                      variant=variant)
  x = jax.random.normal(RNG, (3, 5, 32))
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
  params = random_params_for(module, x, mask)
  out, out_mask = module.apply({"params": params}, x, mask)
  pooled = np.asarray(jnp.sum(x * mask[..., None], 1) / jnp.sum(mask, 1)[:, None])
  expected = _prompt_from_params(params, pooled, variant)
  num_prompt = expected.shape[1]
  assert num_prompt == (2 * P if variant == "concat" else P)
  np.testing.assert_allclose(out[:, :num_prompt], expected, atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(out[:, num_prompt:], x)
  np.testing.assert_array_equal(out_mask[:, :num_prompt], True)
  np.testing.assert_array_equal(out_mask[:, num_prompt:], mask)


def random_params_for(module, x, mask):
  shapes = jax.eval_shape(lambda: nn.unbox(module.init(RNG, x, mask)["params"]))
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.5,
                                            jnp.float32), shapes)


@pytest.mark.parametrize("features", ["encoder", "embeddings"])
def test_features_are_the_pooled_encoder_output_or_embeddings(features):
  """'encoder': the mean of the un-prompted frozen encoder output over real tokens
  (computed by the Transformer); 'embeddings': the mean input embedding."""
  config = one_layer_config()
  enc, dec, _ = batch()
  method = lopa(length=P, rank=R, hidden_dim=HID, features=features)
  assert method.prompt.needs_encoder_features == (features == "encoder")
  model = method.build(config)
  params = random_params(model, enc, dec, seed=2)
  bound = model.bind({"params": params})
  plain, mask = bound.encoder(enc, use_prompt=False)
  embedded = params["token_embedder"]["embedding"][enc]
  source = plain if features == "encoder" else embedded
  w = mask[..., None].astype(jnp.float32)
  pooled = jnp.sum(source * w, 1) / jnp.sum(w, 1)  # [B, H]
  given = pooled if features == "encoder" else None
  full, _ = bound.encode(enc)
  manual, _ = bound.encoder(enc, features=given)
  np.testing.assert_allclose(full, manual, atol=1e-5, rtol=1e-5)
  prompt, _ = method.prompt.apply({"params": params["encoder"]["prompt"]}, embedded,
                                  enc > 0, features=given)
  expected = _prompt_from_params(params["encoder"]["prompt"], np.asarray(pooled))
  np.testing.assert_allclose(prompt[:, :P], expected, atol=1e-5, rtol=1e-5)
  assert not np.allclose(expected[0], expected[1])  # one prompt per example


def test_model_uses_encoder_features():
  """The Transformer feeds the pooled encoder output: logits change with it."""
  config = one_layer_config()
  enc, dec, _ = batch()
  method = lopa(length=P, rank=R, hidden_dim=HID, features="encoder")
  model = method.build(config)
  params = random_params(model, enc, dec, seed=2)
  apply = jax.jit(model.apply)
  logits = apply({"params": params}, enc, dec)
  # Changing only the last encoder layer changes the features, hence the prompt,
  # hence the output — also at decoder position 0.
  other = jax.tree.map(lambda x: x, params)
  other["encoder"]["encoder_norm"]["scale"] = params["encoder"]["encoder_norm"]["scale"] * 3
  assert not np.allclose(logits, apply({"params": other}, enc, dec))
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_encoder_features_are_required_outside_the_model():
  module = LopaPrompt(length=P, rank=R, hidden_dim=HID, features="encoder")
  with pytest.raises(ValueError, match="embeddings"):
    module.init(RNG, jnp.ones((1, 3, 32)), jnp.ones((1, 3), bool))


def test_initialize_applies_the_prompt_initializer_to_z_s():
  config = tiny_config()
  enc, dec, _ = batch()
  method = lopa(length=P, rank=R, hidden_dim=HID, initializer=inits.sampled_vocab())
  model = method.build(config)
  params = params_lib.without_params(random_params(model, enc, dec), "encoder/prompt")
  loaded = jax.jit(lambda rng, p: method.initialize(rng, p, config))(RNG, params)
  table = np.asarray(params["token_embedder"]["embedding"])
  for row in np.asarray(loaded["encoder"]["prompt"]["prompt"]):
    assert np.any(np.all(table == row, axis=1))
  heads = loaded["encoder"]["prompt"]["u_head"]
  assert heads["out_kernel"].shape == (HID, P * R)
  assert float(jnp.std(heads["out_kernel"])) < 0.05  # N(0, 0.02²) as in the paper
  np.testing.assert_array_equal(heads["out_bias"], 0.0)


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="features"):
    lopa(features="pooler")
  with pytest.raises(ValueError, match="variant"):
    lopa(variant="mul")
