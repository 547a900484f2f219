"""The frozen T5.1.1 network: sizes, parameter paths and axis names, masking, cache."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import config as config_lib
from prompt_tuning.models import layers
from prompt_tuning.models import t5


def _abstract_params(cfg):
  model = t5.Transformer(cfg)
  tokens = jnp.ones((1, 4), jnp.int32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, tokens)["params"]


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# Sizes of the released T5 1.1 (LM-adapted) checkpoints, as counted from their T5X
# parameter trees; the presets must be these architectures, not approximations.
@pytest.mark.parametrize("name,published", [
    ("small", 77e6), ("base", 248e6), ("large", 783e6), ("xl", 2.85e9),
    ("xxl", 11.1e9), ("mt5_base", 580e6)])
def test_preset_parameter_counts_match_published_sizes(name, published):
  count = _count(_abstract_params(config_lib.preset(name)))
  assert abs(count - published) / published < 0.01, (name, count)


def test_every_parameter_has_logical_axis_names():
  abstract = _abstract_params(config_lib.preset("tiny"))
  flat = flax.traverse_util.flatten_dict(abstract, sep="/")
  assert len(flat) > 20
  for path, leaf in flat.items():
    assert isinstance(leaf, nn.LogicallyPartitioned), f"{path} has no axis names"
    assert len(leaf.names) == len(leaf.value.shape), path
    assert all(isinstance(n, str) for n in leaf.names), path


def test_parameter_paths_follow_t5x():
  cfg = config_lib.preset("tiny")
  flat = flax.traverse_util.flatten_dict(nn.unbox(_abstract_params(cfg)), sep="/")
  h, joined = cfg.emb_dim, cfg.num_heads * cfg.head_dim
  expected = {
      "token_embedder/embedding": (cfg.vocab_size, h),
      "encoder/relpos_bias/rel_embedding": (cfg.num_heads,
                                            cfg.relative_attention_num_buckets),
      "encoder/layers_0/attention/query/kernel": (h, joined),
      "encoder/layers_1/attention/out/kernel": (joined, h),
      "encoder/layers_0/mlp/wi_0/kernel": (h, cfg.mlp_dim),
      "encoder/layers_0/mlp/wo/kernel": (cfg.mlp_dim, h),
      "encoder/layers_0/pre_attention_layer_norm/scale": (h,),
      "encoder/encoder_norm/scale": (h,),
      "decoder/layers_1/self_attention/key/kernel": (h, joined),
      "decoder/layers_0/encoder_decoder_attention/value/kernel": (h, joined),
      "decoder/layers_0/pre_cross_attention_layer_norm/scale": (h,),
      "decoder/decoder_norm/scale": (h,),
      "decoder/relpos_bias/rel_embedding": (cfg.num_heads,
                                            cfg.relative_attention_num_buckets),
      "decoder/logits_dense/kernel": (h, cfg.vocab_size),
  }
  for path, shape in expected.items():
    assert flat[path].shape == shape, path
  assert not any("bias" in p and "relpos" not in p for p in flat)  # T5.1.1: no biases


@pytest.mark.parametrize("relative,bidirectional,bucket", [
    (0, True, 0), (-1, True, 1), (1, True, 17), (-7, True, 7), (-8, True, 8),
    (-16, True, 10), (-200, True, 15), (200, True, 31),
    (5, False, 0), (-5, False, 5), (-16, False, 16), (-1000, False, 31)])
def test_relative_position_buckets(relative, bidirectional, bucket):
  # Hand-computed from T5's definition with 32 buckets, max distance 128: exact
  # buckets below half the (per-direction) count, log-spaced beyond it.
  got = layers.relative_position_bucket(np.array([relative]), bidirectional, 32, 128)
  assert int(got[0]) == bucket


@pytest.fixture(scope="module")
def tiny():
  cfg = config_lib.preset("tiny").replace(vocab_size=128)
  model = t5.Transformer(cfg)
  rng = np.random.default_rng(0)
  enc = jnp.asarray(rng.integers(2, 128, size=(3, 11)), jnp.int32)
  enc = enc.at[1, 7:].set(0).at[2, 4:].set(0)  # padded rows
  dec = jnp.asarray(rng.integers(2, 128, size=(3, 6)), jnp.int32).at[:, 0].set(0)
  params = model.init(jax.random.PRNGKey(1), enc, dec)["params"]
  return cfg, model, nn.unbox(params), enc, dec


def test_forward_shapes_and_float32_logits(tiny):
  cfg, model, params, enc, dec = tiny
  logits = model.apply({"params": params}, enc, dec)
  assert logits.shape == (3, 6, cfg.vocab_size) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_encoder_padding_does_not_change_outputs(tiny):
  _, model, params, enc, dec = tiny
  short = model.apply({"params": params}, enc[2:, :4], dec[2:])
  padded = model.apply({"params": params}, enc[2:], dec[2:])
  np.testing.assert_allclose(short, padded, atol=1e-5)


def test_decoder_is_causal(tiny):
  _, model, params, enc, dec = tiny
  changed = dec.at[:, 4].set(5)
  a = model.apply({"params": params}, enc, dec)
  b = model.apply({"params": params}, enc, changed)
  np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-6)
  assert not np.allclose(a[:, 4:], b[:, 4:])


def test_dropout_only_when_enabled(tiny):
  _, model, params, enc, dec = tiny
  a = model.apply({"params": params}, enc, dec)
  b = model.apply({"params": params}, enc, dec)
  np.testing.assert_array_equal(a, b)
  c = model.apply({"params": params}, enc, dec, enable_dropout=True,
                  rngs={"dropout": jax.random.PRNGKey(3)})
  assert not np.allclose(a, c)


def test_bfloat16_activations_keep_float32_params(tiny):
  cfg, _, params, enc, dec = tiny
  model = t5.Transformer(cfg.replace(dtype=jnp.bfloat16))
  logits = model.apply({"params": params}, enc, dec)
  reference = t5.Transformer(cfg).apply({"params": params}, enc, dec)
  assert logits.dtype == jnp.float32  # logits are always returned in float32
  assert np.max(np.abs(logits - reference)) < 0.1 * np.max(np.abs(reference))
  fresh = model.init(jax.random.PRNGKey(0), enc, dec)["params"]
  assert {x.dtype for x in jax.tree.leaves(nn.unbox(fresh))} == {jnp.dtype("float32")}


def test_incremental_decoding_matches_full_forward(tiny):
  _, model, params, enc, dec = tiny
  full = model.apply({"params": params}, enc, dec)
  encoded, mask = model.apply({"params": params}, enc, method=model.encode)
  length = dec.shape[1]
  _, variables = model.apply({"params": params}, encoded, mask,
                             jnp.zeros_like(dec), decode=True,
                             max_decode_length=length, method=model.decode,
                             mutable=["cache"])
  cache = variables["cache"]
  for i in range(length):
    step_logits, variables = model.apply(
        {"params": params, "cache": cache}, encoded, mask, dec[:, i:i + 1],
        decode=True, max_decode_length=length, method=model.decode,
        mutable=["cache"])
    cache = variables["cache"]
    np.testing.assert_allclose(step_logits[:, 0], full[:, i], atol=1e-5, rtol=1e-5)


def test_decoding_projects_the_encoder_output_once(tiny):
  """Cross-attention keys/values are made when the cache is created and reused:
  later steps read them from the cache, not from the `encoded` they are given."""
  from prompt_tuning.models import decoding  # pylint: disable=g-import-not-at-top
  config, model, params, enc, dec = tiny
  encoded, mask = model.apply({"params": params}, enc, method=model.encode)
  length = dec.shape[1]
  cache = decoding.init_cache(model, params, encoded, mask, length)
  cross = cache["decoder"]["layers_0"]["encoder_decoder_attention"]
  assert cross["cached_input_key"].shape == (enc.shape[0], encoded.shape[1],
                                             config.num_heads, config.head_dim)
  self_attention = cache["decoder"]["layers_0"]["self_attention"]
  assert self_attention["cached_key"].shape[1] == length
  assert int(self_attention["cache_index"]) == 0
  step = lambda c, e: decoding.decode_step(model, params, c, e, mask, dec[:, 0],
                                           length)
  logits, _ = step(cache, encoded)
  same, _ = step(cache, jnp.zeros_like(encoded))
  np.testing.assert_array_equal(logits, same)
  fresh = decoding.init_cache(model, params, jnp.zeros_like(encoded), mask, length)
  other, _ = step(fresh, encoded)
  assert np.abs(np.asarray(other) - np.asarray(logits)).max() > 1e-4
