"""Prefix tuning: shapes, the MLP reparametrization and its folding for inference."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import params as params_lib
from prompt_tuning.methods import prefix as prefix_lib
from prompt_tuning.methods.prefix import prefix_tuning

from methods_testlib import abstract_params, batch, random_params, tiny_config

RNG = jax.random.PRNGKey(0)
P, HIDDEN = 3, 16


@pytest.fixture(scope="module")
def setup():
  config = tiny_config(num_decoder_layers=3)  # 2 encoder, 3 decoder layers
  method = prefix_tuning(length=P, hidden_dim=HIDDEN)
  model = method.build(config)
  enc, dec, tgt = batch()
  params = random_params(model, enc, dec)
  return config, method, model, params, (enc, dec, tgt)


def test_training_parameters_paths_shapes_and_axes(setup):
  config, method, model, _, (enc, dec, _) = setup
  boxed = params_lib.flatten(jax.eval_shape(lambda: model.init(RNG, enc, dec))["params"])
  own = {k: v for k, v in boxed.items() if k.startswith("prefix/")}
  assert all(isinstance(v, nn.LogicallyPartitioned) for v in own.values())
  shapes = {k: v.value.shape for k, v in own.items()}
  assert shapes["prefix/encoder/embedding"] == (P, 32)  # P' [P, d], d = H
  assert shapes["prefix/encoder/hidden_kernel"] == (32, HIDDEN)
  assert shapes["prefix/encoder/out_kernel"] == (HIDDEN, 2, 2, 4, 8)  # [k, L, 2, N, D]
  assert shapes["prefix/decoder/out_kernel"] == (HIDDEN, 3, 2, 4, 8)
  assert own["prefix/encoder/out_kernel"].names == (
      "prefix_mlp", "layers", "kv_pair", "heads", "kv")
  assert [k for k in boxed if method.is_trainable(k)] == sorted(own)
  del config


def test_module_output_is_per_layer_keys_and_values(setup):
  config, method, _, params, _ = setup
  module = method.prefix.clone(config=config)
  out = module.apply({"params": params["prefix"]}, deterministic=True)
  assert set(out) == {"encoder", "decoder"}
  assert out["encoder"][0].shape == (2, P, 4, 8)  # [L, P, N, D]
  assert out["decoder"][1].shape == (3, P, 4, 8)
  keys, values = prefix_lib.prefixes_from_mlp(params["prefix"]["decoder"])
  np.testing.assert_allclose(out["decoder"][0], keys, rtol=1e-6)
  np.testing.assert_allclose(out["decoder"][1], values, rtol=1e-6)
  assert not np.allclose(keys, values)


def test_standalone_module_without_config_says_how_to_fix():
  with pytest.raises(ValueError, match="config"):
    prefix_tuning(length=2).prefix.init(RNG)


def test_prefixes_reach_both_stacks(setup):
  _, _, model, params, (enc, dec, _) = setup
  apply = jax.jit(model.apply)
  base_logits = apply({"params": params}, enc, dec)
  for stack in ("encoder", "decoder"):
    shifted = jax.tree.map(lambda x: x, params)
    shifted["prefix"][stack]["out_bias"] = shifted["prefix"][stack]["out_bias"] + 1.0
    assert not np.allclose(base_logits, apply({"params": shifted}, enc, dec)), stack


def test_folded_prefixes_give_the_same_outputs(setup):
  config, method, model, params, (enc, dec, _) = setup
  inference = method.inference_method()
  folded = method.inference_params(params)
  flat = params_lib.flatten(folded)
  assert not any(k.startswith("prefix/") and "kernel" in k for k in flat)
  assert flat["prefix/encoder/key"].shape == (2, P, 4, 8)
  assert flat["prefix/decoder/value"].shape == (3, P, 4, 8)
  inference_model = inference.build(config)
  # The folded tree is exactly the inference model's parameter tree.
  expected = abstract_params(inference_model, enc, dec)
  assert jax.tree.structure(expected) == jax.tree.structure(folded)
  np.testing.assert_allclose(
      jax.jit(model.apply)({"params": params}, enc, dec),
      jax.jit(inference_model.apply)({"params": folded}, enc, dec),
      atol=1e-5, rtol=1e-5)
  assert inference.name == "prefix" and inference.prefix is not None


def test_folded_prefixes_in_cached_decoding_match_the_full_pass(setup):
  config, method, _, params, (enc, dec, _) = setup
  model = method.inference_method().build(config)
  folded = method.inference_params(params)
  full = jax.jit(model.apply)({"params": folded}, enc, dec)
  encoded, mask = jax.jit(functools.partial(model.apply, method=model.encode))(
      {"params": folded}, enc)
  length = dec.shape[1]
  decode = jax.jit(functools.partial(model.apply, decode=True, max_decode_length=length,
                                     method=model.decode, mutable=["cache"]))
  _, variables = decode({"params": folded}, encoded, mask, jnp.zeros_like(dec))
  cache = variables["cache"]
  for i in range(length):
    step, variables = decode({"params": folded, "cache": cache}, encoded, mask,
                             dec[:, i:i + 1])
    cache = variables["cache"]
    np.testing.assert_allclose(step[:, 0], full[:, i], atol=1e-5, rtol=1e-5)


def test_export_writes_the_folded_prefixes(setup):
  _, method, _, params, _ = setup
  exported = method.exported(params)
  assert sorted(exported) == ["prefix.decoder.key", "prefix.decoder.value",
                              "prefix.encoder.key", "prefix.encoder.value"]
  folded = method.inference_params(params)
  np.testing.assert_allclose(exported["prefix.encoder.key"],
                             folded["prefix"]["encoder"]["key"], rtol=1e-6)
  # The inference method exports the same arrays under the same names.
  again = method.inference_method().exported(folded)
  assert sorted(again) == sorted(exported)
  np.testing.assert_array_equal(again["prefix.decoder.value"],
                                exported["prefix.decoder.value"])


def test_initialize_creates_prefix_params_for_a_frozen_checkpoint(setup):
  config, method, _, params, _ = setup
  frozen_only = params_lib.without_params(params, "prefix")
  loaded = jax.jit(lambda rng, p: method.initialize(rng, p, config))(
      jax.random.PRNGKey(5), frozen_only)
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  assert not np.allclose(loaded["prefix"]["encoder"]["embedding"],
                         params["prefix"]["encoder"]["embedding"])
