"""Deep prompts: per-layer prompts (replace / add, the official code's semantics),
P-tuning v2 flat prefixes, cross-attention prefixes and prefixes initialized from
the frozen model's activations on real words."""
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import params as base
from prompt_tuning.methods import prefix as prefix_lib
from prompt_tuning.methods.deep_prompt import per_layer_prompt
from prompt_tuning.methods.prefix import p_tuning_v2, prefix_tuning
from prompt_tuning.methods.prompt import prompt_tuning
from prompt_tuning.models.t5 import Transformer

from methods_testlib import (abstract_params, batch, changed_after_steps,
                             one_layer_config, random_params, tiny_config)
from methods_testlib import loss as eager_loss


def loss(model, params, enc, dec, tgt):
  return float(jax.jit(functools.partial(eager_loss, model))(params, enc, dec, tgt))


def logits(model, params, enc, dec):
  return np.asarray(jax.jit(model.apply)({"params": params}, enc, dec))


class CharVocab:
  """A stand-in vocabulary: one id per character."""

  def encode(self, text):
    return [2 + ord(c) % 100 for c in text]


# ---------------------------------------------------------------- per-layer prompts


@pytest.fixture(scope="module")
def two_layers():
  config = tiny_config(num_decoder_layers=1)
  method = per_layer_prompt(length=3, mode="replace")
  model = method.build(config)
  enc, dec, tgt = batch()
  params = random_params(model, enc, dec)
  return config, model, params, (enc, dec, tgt)


def test_per_layer_prompts_paths_and_axes(two_layers):
  _, model, _, (enc, dec, _) = two_layers
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), enc, dec)["params"])
  flat = flax.traverse_util.flatten_dict(boxed, sep="/")
  prompts = sorted(p for p in flat if "prompt" in p)
  assert prompts == ["encoder/layers_0/prompt/prompt", "encoder/layers_1/prompt/prompt",
                     "encoder/prompt/prompt"]
  for p in prompts:
    assert flat[p].value.shape == (3, 32) and flat[p].names == ("prompt", "embed")


def _with(params, **prompts):
  return base.with_params(params, {k.replace("__", "/"): v for k, v in prompts.items()})


def test_replace_overwrites_the_prompt_positions_at_every_layer(two_layers):
  config, model, params, (enc, dec, tgt) = two_layers
  flat = base.flatten(params)
  p0, p1 = flat["encoder/layers_0/prompt/prompt"], flat["encoder/layers_1/prompt/prompt"]
  # The input prompt is overwritten at layer 0: it does not matter.
  other = _with(params, encoder__prompt__prompt=jnp.zeros((3, 32)))
  assert loss(model, params, enc, dec, tgt) == pytest.approx(
      loss(model, other, enc, dec, tgt), abs=1e-6)
  # Layer 1's prompt does matter.
  moved = _with(params, encoder__layers_1__prompt__prompt=p1 + 1.0)
  assert abs(loss(model, moved, enc, dec, tgt) - loss(model, params, enc, dec, tgt)) > 1e-4
  # With one encoder layer and the layer prompt equal to the input prompt, replace is
  # plain prompt tuning with that prompt.
  one = one_layer_config()
  method = per_layer_prompt(length=3, mode="replace")
  m1 = method.build(one)
  p = random_params(m1, enc, dec, seed=3)
  same = _with(p, encoder__layers_0__prompt__prompt=base.get_param(p, "encoder/prompt/prompt"))
  plain = prompt_tuning(length=3).build(one)
  plain_params = base.without_params(same, "encoder/layers_0/prompt")
  np.testing.assert_allclose(logits(m1, same, enc, dec),
                             logits(plain, plain_params, enc, dec), atol=1e-5)
  del config, p0


def test_add_with_zero_layer_prompts_is_prompt_tuning(two_layers):
  config, _, params, (enc, dec, _) = two_layers
  model = per_layer_prompt(length=3, mode="add").build(config)
  zero = _with(params, encoder__layers_0__prompt__prompt=jnp.zeros((3, 32)),
               encoder__layers_1__prompt__prompt=jnp.zeros((3, 32)))
  plain = prompt_tuning(length=3).build(config)
  plain_params = base.without_params(base.without_params(zero, "encoder/layers_0/prompt"),
                                     "encoder/layers_1/prompt")
  np.testing.assert_allclose(logits(model, zero, enc, dec),
                             logits(plain, plain_params, enc, dec), atol=1e-5)
  assert not np.allclose(logits(model, params, enc, dec),
                         logits(plain, plain_params, enc, dec), atol=1e-3)


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_per_layer_training_changes_the_right_prompts(two_layers, mode):
  config, _, params, _ = two_layers
  changed, _ = changed_after_steps(per_layer_prompt(length=3, mode=mode), config, params)
  layers = ["encoder/layers_0/prompt/prompt", "encoder/layers_1/prompt/prompt"]
  # replace: the input prompt gets no gradient (overwritten at layer 0).
  assert changed == (layers if mode == "replace" else layers + ["encoder/prompt/prompt"])


def test_per_layer_refuses_unknown_modes():
  with pytest.raises(ValueError, match="'replace', 'add'"):
    per_layer_prompt(mode="concat")


# ---------------------------------------------------------------- P-tuning v2


def test_flat_prefix_trains_keys_and_values_directly():
  config = one_layer_config()
  method = p_tuning_v2(length=2)
  assert method.name == "p_tuning_v2"
  model = method.build(config)
  enc, dec, _ = batch()
  flat = base.flatten(abstract_params(model, enc, dec))
  prefix = sorted(p for p in flat if p.startswith("prefix/"))
  assert prefix == ["prefix/decoder/key", "prefix/decoder/value", "prefix/encoder/key",
                    "prefix/encoder/value"]
  assert flat["prefix/encoder/key"].shape == (1, 2, config.num_heads, config.head_dim)
  params = random_params(model, enc, dec)
  changed, _ = changed_after_steps(method, config, params)
  assert changed == prefix
  # The trained parameters are already the inference form.
  exported = method.exported(params)
  assert sorted(exported) == [p.replace("/", ".") for p in prefix]
  assert method.inference_method().name == "p_tuning_v2"


# ---------------------------------------------------------------- cross-attention


def test_cross_attention_prefixes_exist_fold_and_export():
  config = tiny_config(num_decoder_layers=3)
  method = prefix_tuning(length=2, hidden_dim=8, cross_attention=True)
  model = method.build(config)
  enc, dec, _ = batch()
  params = random_params(model, enc, dec)
  assert base.get_param(params, "prefix/cross/out_kernel").shape == (8, 3, 2, 4, 8)
  exported = method.exported(params)
  assert sorted(exported) == sorted(f"prefix.{s}.{k}" for s in ("cross", "decoder", "encoder")
                                    for k in ("key", "value"))
  assert exported["prefix.cross.key"].shape == (3, 2, 4, 8)
  folded = method.inference_params(params)
  np.testing.assert_allclose(
      logits(method.inference_method().build(config), folded, enc, dec),
      logits(model, params, enc, dec), atol=1e-5)
  # Removing only the cross prefixes changes the logits: they are used.
  no_cross = prefix_lib.FoldedPrefix(length=2)
  assert not np.allclose(
      logits(Transformer(config, prefix=no_cross),
             base.without_params(folded, "prefix/cross"), enc, dec),
      logits(model, params, enc, dec), atol=1e-3)


def test_cross_prefix_of_the_inputs_own_keys_changes_nothing():
  """Attention over keys/values duplicated is attention over them once: a cross
  prefix made of the encoder output's own cross keys/values (from `init_text` equal
  to the unpadded input) leaves the logits unchanged. Checks the cross hook, the
  cross activations and cached decoding with cross prefixes."""
  config = tiny_config(num_encoder_layers=1)
  text = "abcdef"
  tokens = CharVocab().encode(text)
  plain = Transformer(config)
  enc = jnp.asarray([tokens])
  dec = jnp.asarray([[0, 5, 9, 11]])
  frozen = random_params(plain, enc, dec)
  acts = prefix_lib.word_activations(frozen, config, tokens, ("cross",))
  keys, values = acts["cross"]
  assert keys.shape == (2, 6, 4, 8)
  model = Transformer(config, prefix=prefix_lib.FoldedPrefix(length=6, stacks=("cross",)))
  params = base.with_params(frozen, {"prefix/cross/key": keys, "prefix/cross/value": values})
  full = logits(model, params, enc, dec)
  np.testing.assert_allclose(full, logits(plain, frozen, enc, dec), atol=1e-5)
  shifted = base.with_params(params, {"prefix/cross/value": values + 1.0})
  assert not np.allclose(logits(model, shifted, enc, dec), full, atol=1e-3)
  # One token at a time through the cache, with the cross prefixes.
  encoded, mask = jax.jit(functools.partial(model.apply, method=model.encode))(
      {"params": shifted}, enc)
  decode = jax.jit(functools.partial(model.apply, decode=True, max_decode_length=4,
                                     method=model.decode, mutable=["cache"]))
  _, variables = decode({"params": shifted}, encoded, mask, jnp.zeros_like(dec))
  cache, reference = variables["cache"], logits(model, shifted, enc, dec)
  for i in range(4):
    step, variables = decode({"params": shifted, "cache": cache}, encoded, mask,
                             dec[:, i:i + 1])
    cache = variables["cache"]
    np.testing.assert_allclose(step[:, 0], reference[:, i], atol=1e-5)


# ---------------------------------------------------------------- real-word init


def test_word_init_takes_each_layers_keys_and_values():
  config = tiny_config()
  text = "summarize"
  method = p_tuning_v2(length=4, cross_attention=True, init_text=text,
                       init_vocabulary=CharVocab())
  enc, dec, _ = batch()
  frozen = random_params(Transformer(config), enc, dec)
  params = method.initialize(jax.random.PRNGKey(0), frozen, config)
  keys = base.get_param(params, "prefix/encoder/key")  # [L, P, N, D]
  # Reference for encoder layer 0: RMS-normed embeddings @ the key kernel.
  ids = np.asarray(CharVocab().encode(text)[:4])
  x = np.asarray(base.get_param(frozen, "token_embedder/embedding"))[ids]
  scale = np.asarray(base.get_param(frozen, "encoder/layers_0/pre_attention_layer_norm/scale"))
  normed = x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + 1e-6) * scale
  kernel = np.asarray(base.get_param(frozen, "encoder/layers_0/attention/key/kernel"))
  np.testing.assert_allclose(keys[0].reshape(4, -1), normed @ kernel, atol=1e-4, rtol=1e-4)
  assert not np.allclose(keys[1], keys[0])
  value = base.get_param(params, "prefix/decoder/value")
  assert value.shape == (2, 4, 4, 8) and np.std(value) > 0
  assert base.get_param(params, "prefix/cross/key").shape == (2, 4, 4, 8)


def test_word_init_of_the_mlp_form_reproduces_the_activations():
  config = one_layer_config()
  words = prefix_lib.word_activations
  mlp = prefix_tuning(length=3, hidden_dim=16, init_text="translate",
                      init_vocabulary=CharVocab())
  flat = p_tuning_v2(length=3, init_text="translate", init_vocabulary=CharVocab())
  enc, dec, _ = batch()
  frozen = random_params(Transformer(config), enc, dec)
  mlp_params = mlp.initialize(jax.random.PRNGKey(0), frozen, config)
  flat_params = flat.initialize(jax.random.PRNGKey(1), frozen, config)
  folded = mlp.inference_params(mlp_params)
  for stack in ("encoder", "decoder"):
    for kind in ("key", "value"):
      np.testing.assert_allclose(base.get_param(folded, f"prefix/{stack}/{kind}"),
                                 base.get_param(flat_params, f"prefix/{stack}/{kind}"),
                                 atol=1e-4)
  del words


def test_word_init_refuses_a_text_shorter_than_the_prefix():
  config = one_layer_config()
  method = p_tuning_v2(length=5, init_text="abc", init_vocabulary=CharVocab())
  enc, dec, _ = batch()
  frozen = random_params(Transformer(config), enc, dec)
  with pytest.raises(ValueError, match="has 3 tokens but the prefix length is 5"):
    method.initialize(jax.random.PRNGKey(0), frozen, config)
