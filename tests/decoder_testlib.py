"""Helpers shared by the decoder-only model tests (GPT-2 and Llama family)."""
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import partitioning
from prompt_tuning.methods import prompt as prompt_method
from prompt_tuning.models import families


class FixedPrompt(nn.Module):
  """A prompt hook that prepends given vectors `[P, H]` (no parameters)."""
  vectors: np.ndarray
  needs_encoder_features = False

  def __call__(self, x, mask, features=None, prompt_index=None, deterministic=True):
    batched = jnp.broadcast_to(jnp.asarray(self.vectors)[None],
                               (x.shape[0],) + self.vectors.shape)
    return prompt_method.prefix(batched, x, mask)


class FixedPrefix(nn.Module):
  """A prefix hook whose `(keys, values)` `[L, P, K, D]` are the parameters
  `prefix/key` and `prefix/value` (hashable, so decoding can jit over it)."""
  shape: tuple

  @nn.compact
  def __call__(self, deterministic=True):
    init = nn.initializers.zeros
    return {"decoder": (self.param("key", init, self.shape),
                        self.param("value", init, self.shape))}


def past_as_prefix(config, params, tokens):
  """(a FixedPrefix model, params with the prefix) whose prefix is the cached
  keys/values of `tokens [1, P]`."""
  model = families.build(config)
  _, cache = apply(model, {"params": params}, jnp.asarray(tokens), method="prefill",
                   cache_length=tokens.shape[1])
  layers = _attention_caches(cache["cache"])
  keys = np.stack([np.asarray(c["cached_key"][0]) for c in layers])  # [L, P, K, D]
  values = np.stack([np.asarray(c["cached_value"][0]) for c in layers])
  prefixed = families.build(config, prefix=FixedPrefix(keys.shape))
  return prefixed, {**params, "prefix": {"key": keys, "value": values}}


def apply(model, variables, *args, method=None, cache_length=None):
  """`model.apply` under `jax.jit` (op-by-op dispatch is slow); with `method`
  ('prefill' / 'step') the cache is mutable and `(logits, cache)` returned."""
  key = (id(model), method, cache_length)
  if key not in _JITTED:
    if method is None:
      fn = lambda v, *a: model.apply(v, *a)
    else:
      kwargs = {"cache_length": cache_length} if cache_length else {}
      fn = lambda v, *a: model.apply(v, *a, method=getattr(model, method),
                                     mutable=["cache"], **kwargs)
    _JITTED[key] = (model, jax.jit(fn))  # holding the model keeps its id unique
  return _JITTED[key][1](variables, *args)


_JITTED = {}


def parameter_count(config) -> int:
  model = families.build(config)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), *families.init_inputs(config))["params"])
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(
      nn.unbox(abstract)))


def init(config, seed=0, **hooks):
  """(model, random params): shapes from `jax.eval_shape`, values drawn in numpy
  (norm scales around 1, everything else N(0, 0.2²)), which is much faster than
  compiling `init` and makes every parameter matter."""
  model = families.build(config, **hooks)
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), *families.init_inputs(config))["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = 0.2 * rng.standard_normal(leaf.shape)
    scale = getattr(path[-1], "key", None) == "scale"
    return (noise + (1.0 if scale else 0.0)).astype(np.float32)
  return model, jax.tree_util.tree_map_with_path(draw, nn.unbox(abstract))


def assert_logical_axes_everywhere(config):
  """Every parameter is boxed with one known logical name per dimension."""
  model = families.build(config)
  boxed = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), *families.init_inputs(config))["params"])
  known = {name for name, _ in partitioning.LOGICAL_AXIS_RULES}
  flat = jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  assert flat
  for path, leaf in flat:
    assert isinstance(leaf, nn.Partitioned), path
    assert len(leaf.names) == len(leaf.value.shape), path
    assert set(leaf.names) <= known, (path, leaf.names)


def prompt_equals_tokens(config, seed=0):
  """A prompt of the model's own embeddings of tokens `a` before tokens `b` gives
  the logits of the sequence `a + b` (so prompt positions and masks are right)."""
  model, params = init(config, seed)
  rng = np.random.default_rng(seed)
  a = rng.integers(1, config.vocab_size, (1, 4))
  b = rng.integers(1, config.vocab_size, (2, 7))
  b[1, 5:] = 0  # padding after the input
  table = _embedding(config, params)
  prompted = families.build(config, prompt=FixedPrompt(np.asarray(table[a[0]])))
  got = apply(prompted, {"params": params}, jnp.asarray(b))
  full = np.concatenate([np.repeat(a, 2, axis=0), b], axis=1)
  want = apply(model, {"params": params}, jnp.asarray(full))
  real = np.concatenate([np.ones((2, 4), bool), b > 0], axis=1)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real],
                             atol=1e-4, rtol=1e-4)
  # Prefill with the prompt, then step: the same logits as teacher forcing.
  logits, cache = apply(prompted, {"params": params}, jnp.asarray(b[:, :3]),
                        method="prefill", cache_length=12)
  np.testing.assert_allclose(logits, np.asarray(want)[:, :7], atol=1e-4, rtol=1e-4)
  for i in range(3, 5):
    step, cache = apply(prompted, {"params": params, **cache},
                        jnp.asarray(b[:, i:i + 1]), method="step")
    np.testing.assert_allclose(step[:, 0], np.asarray(want)[:, 4 + i], atol=1e-4,
                               rtol=1e-4)


def prefix_equals_past(config, seed=0):
  """Prefixes equal to the cached keys/values of tokens `a` give, for tokens `b`,
  the logits of `a + b` at b's positions (prefix = `past_key_values`, as PEFT)."""
  model, params = init(config, seed)
  rng = np.random.default_rng(seed)
  a = rng.integers(1, config.vocab_size, (1, 5))
  b = rng.integers(1, config.vocab_size, (1, 6))
  prefixed, prefixed_params = past_as_prefix(config, params, a)
  got = apply(prefixed, {"params": prefixed_params}, jnp.asarray(b))
  want = apply(model, {"params": params}, jnp.asarray(np.concatenate([a, b], 1)))
  np.testing.assert_allclose(got, np.asarray(want)[:, 5:], atol=1e-4, rtol=1e-4)
  # The prefix is prefilled into the cache once; steps then see it.
  logits, cache = apply(prefixed, {"params": prefixed_params}, jnp.asarray(b[:, :4]),
                        method="prefill", cache_length=12)
  np.testing.assert_allclose(logits, np.asarray(want)[:, 5:9], atol=1e-4, rtol=1e-4)
  step, _ = apply(prefixed, {"params": prefixed_params, **cache},
                  jnp.asarray(b[:, 4:5]), method="step")
  np.testing.assert_allclose(step[:, 0], np.asarray(want)[:, 9], atol=1e-4, rtol=1e-4)


def _embedding(config, params) -> np.ndarray:
  if "transformer" in params:
    return np.asarray(params["transformer"]["wte"]["embedding"])
  return np.asarray(params["model"]["embed_tokens"]["embedding"])


def _attention_caches(cache):
  backbone = cache.get("transformer") or cache["model"]
  names = sorted((k for k in backbone if k.startswith(("h_", "layers_"))),
                 key=lambda k: int(k.split("_")[1]))
  return [backbone[n].get("attn") or backbone[n]["self_attn"] for n in names]
