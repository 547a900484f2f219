"""Prompt tuning: the parameter, its combination with the input, lengths, masks."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import params as params_lib
from prompt_tuning.methods import initializers as inits
from prompt_tuning.methods import prompt as prompt_lib
from prompt_tuning.methods.prompt import prompt_tuning

from methods_testlib import batch, one_layer_config, random_params, tiny_config

RNG = jax.random.PRNGKey(0)


def test_prompt_parameter_path_axes_and_regex():
  method = prompt_tuning(length=5)
  enc, dec, _ = batch()
  boxed = jax.eval_shape(lambda: method.build(tiny_config()).init(RNG, enc, dec))
  flat = params_lib.flatten(boxed["params"])
  prompt = flat["encoder/prompt/prompt"]
  assert isinstance(prompt, nn.LogicallyPartitioned)
  assert prompt.names == ("prompt", "embed") and prompt.value.shape == (5, 32)
  trained = [k for k in flat if method.is_trainable(k)]
  assert trained == ["encoder/prompt/prompt"]
  assert params_lib.matches("encoder/prompt/prompt", [r".*/prompt/.*"])


def _placement(mode, x_len=5, lengths=(3, 5), num_prompt=2):
  """Runs the combiner on ids: x[b, t] = t + 1 (0 on padding), prompt = -(p + 1)."""
  t = np.arange(x_len)
  mask = np.stack([t < n for n in lengths])
  x = np.where(mask, t + 1, 0).astype(np.float32)[..., None]
  prompt = -np.broadcast_to(np.arange(1, num_prompt + 1, dtype=np.float32)[None, :, None],
                            (len(lengths), num_prompt, 1))
  out, out_mask = prompt_lib.combine(mode, jnp.asarray(prompt), jnp.asarray(x),
                                     jnp.asarray(mask))
  return np.asarray(out[..., 0]).astype(int).tolist(), np.asarray(out_mask).tolist()


def test_prefix_places_prompt_first_and_keeps_padding_masked():
  values, mask = _placement("prefix")
  assert values == [[-1, -2, 1, 2, 3, 0, 0], [-1, -2, 1, 2, 3, 4, 5]]
  assert mask == [[True, True, True, True, True, False, False], [True] * 7]


def test_after_bos_places_prompt_after_first_token():
  values, mask = _placement("after_bos")
  assert values == [[1, -1, -2, 2, 3, 0, 0], [1, -1, -2, 2, 3, 4, 5]]
  assert mask == [[True, True, True, True, True, False, False], [True] * 7]


def test_suffix_follows_each_examples_own_length():
  values, mask = _placement("suffix")
  assert values == [[1, 2, 3, -1, -2, 0, 0], [1, 2, 3, 4, 5, -1, -2]]
  assert mask == [[True, True, True, True, True, False, False], [True] * 7]


def test_unknown_combination_is_refused():
  with pytest.raises(ValueError, match="after_bos"):
    prompt_tuning(length=3, combine="middle")


@pytest.mark.parametrize("length", [1, 5, 20, 100, 150])
def test_prompt_lengths_run_end_to_end(length):
  config = one_layer_config()
  method = prompt_tuning(length=length)
  model = method.build(config)
  enc, dec, _ = batch()
  params = random_params(model, enc, dec)

  @jax.jit
  def run(params):  # one compile per length: encode, then decode on its output
    encoded, mask = model.apply({"params": params}, enc, method=model.encode)
    return encoded, mask, model.apply({"params": params}, encoded, mask, dec,
                                      method=model.decode)

  encoded, mask, logits = run(params)
  assert encoded.shape == (2, length + enc.shape[1], 32)
  np.testing.assert_array_equal(mask[:, :length], True)  # prompt always visible
  np.testing.assert_array_equal(mask[:, length:], enc > 0)  # padding still masked
  assert logits.shape == (2, dec.shape[1], 128) and bool(jnp.all(jnp.isfinite(logits)))


def test_suffix_logits_equal_the_unpadded_case():
  config = one_layer_config()
  method = prompt_tuning(length=4, combine="suffix")
  model = method.build(config)
  enc, dec, _ = batch(inputs=8)
  params = random_params(model, enc, dec, seed=3)
  apply = jax.jit(model.apply)
  padded = apply({"params": params}, enc, dec)
  for b in range(enc.shape[0]):
    length = int(jnp.sum(enc[b] > 0))
    assert length < enc.shape[1]  # the example really is padded
    alone = apply({"params": params}, enc[b:b + 1, :length], dec[b:b + 1])
    np.testing.assert_allclose(padded[b], alone[0], atol=2e-5, rtol=2e-5)


def test_prompt_changes_the_output():
  method = prompt_tuning(length=3)
  model = method.build(one_layer_config())
  enc, dec, _ = batch()
  params = random_params(model, enc, dec)
  other = params_lib.with_params(params, {"encoder/prompt/prompt": jnp.zeros((3, 32))})
  apply = jax.jit(model.apply)
  assert not np.allclose(apply({"params": params}, enc, dec),
                         apply({"params": other}, enc, dec))


def test_initialize_uses_the_configured_initializer_and_keeps_frozen_params():
  config = tiny_config()
  method = prompt_tuning(length=6, initializer=inits.sampled_vocab())
  model = method.build(config)
  enc, dec, _ = batch()
  params = random_params(model, enc, dec)
  loaded = method.initialize(RNG, params, config)
  prompt = np.asarray(loaded["encoder"]["prompt"]["prompt"])
  table = np.asarray(params["token_embedder"]["embedding"])
  for row in prompt:  # each row is one vocabulary embedding
    assert np.any(np.all(table == row, axis=1))
  for path, value in params_lib.flatten(params).items():
    if path != "encoder/prompt/prompt":
      assert loaded is not params and params_lib.get_param(loaded, path) is value


def test_initialize_adds_the_prompt_to_a_frozen_checkpoint():
  """A loaded checkpoint has no prompt: `initialize` creates it."""
  config = tiny_config()
  method = prompt_tuning(length=4)
  model = method.build(config)
  enc, dec, _ = batch()
  params = params_lib.without_params(random_params(model, enc, dec), "encoder/prompt")
  loaded = method.initialize(RNG, params, config)
  prompt = loaded["encoder"]["prompt"]["prompt"]
  assert prompt.shape == (4, 32) and float(jnp.max(jnp.abs(prompt))) <= 0.5


def test_export_is_the_prompt():
  config = tiny_config()
  method = prompt_tuning(length=4)
  model = method.build(config)
  enc, dec, _ = batch()
  params = random_params(model, enc, dec)
  exported = method.exported(params)
  assert list(exported) == ["encoder.prompt.prompt"]
  np.testing.assert_array_equal(exported["encoder.prompt.prompt"],
                                params["encoder"]["prompt"]["prompt"])
