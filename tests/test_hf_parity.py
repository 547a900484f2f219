"""Numerical parity with Hugging Face `T5ForConditionalGeneration` (transformers).

A small T5 1.1 with random weights is written by `save_pretrained`, loaded with
`prompt_tuning.checkpoints.load`, and both networks are run on the same random
tokens (padded encoder inputs, sequences long enough to reach the logarithmic
relative-position buckets). Logits must agree to 1e-4 in float32, teacher-forced
and one token at a time through our key/value cache.

transformers 5 ties `lm_head` to `shared` whatever the config says, and then
`save_pretrained` writes no `lm_head.weight`. Released T5 1.1 checkpoints carry their
own `lm_head.weight` and `tie_word_embeddings: false`, so the untied reference is
made by writing a distinct `lm_head.weight` into the saved file and reloading (the
fixture checks that transformers then uses it). The tied variants are tested too.
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from prompt_tuning import checkpoints
from prompt_tuning.models import layers
from prompt_tuning.models.t5 import Transformer

HF_SIZES = dict(
    vocab_size=512, d_model=32, d_kv=6, num_heads=4, d_ff=64, num_layers=2,
    num_decoder_layers=3, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    dropout_rate=0.0, layer_norm_epsilon=1e-6, decoder_start_token_id=0,
    pad_token_id=0, eos_token_id=1)
TOLERANCE = 1e-4
ENCODER_LENGTH, DECODER_LENGTH = 64, 44


def _hf_model(seed: int, **overrides) -> transformers.T5ForConditionalGeneration:
  """A randomly initialized HF T5 1.1 whose norms and position biases are not
  near-constant (so that a swapped norm or a wrong bucket shows in the logits)."""
  torch.manual_seed(seed)
  config = transformers.T5Config(**{**HF_SIZES, **overrides})
  model = transformers.T5ForConditionalGeneration(config)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "layer_norm" in name:
        param.copy_(1.0 + 0.3 * torch.randn_like(param))
      elif "relative_attention_bias" in name:
        param.normal_(0.0, 1.0)
  return model.eval()


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  encoder = rng.integers(2, HF_SIZES["vocab_size"], (3, ENCODER_LENGTH))
  encoder[:, -1] = 1
  encoder[1, 40:] = 0  # padded rows
  encoder[2, 9:] = 0
  encoder[1, 39] = encoder[2, 8] = 1
  decoder = rng.integers(2, HF_SIZES["vocab_size"], (3, DECODER_LENGTH))
  decoder[:, 0] = 0  # decoder start token
  return encoder, decoder


def _hf_outputs(model, encoder, decoder):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(encoder),
                attention_mask=torch.tensor(encoder != 0),
                decoder_input_ids=torch.tensor(decoder))
  return out.logits.numpy(), out.encoder_last_hidden_state.numpy()


@functools.lru_cache(maxsize=None)
def _jitted(config):
  """Jitted (forward, encode, decode) of `Transformer(config)`; compiled once."""
  model = Transformer(config)
  forward = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y))
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x,
                                            method=Transformer.encode))

  @functools.partial(jax.jit, static_argnames="length")
  def init_cache(p, encoded, mask, length):
    dummy = jnp.zeros((encoded.shape[0], length), jnp.int32)
    return model.apply({"params": p}, encoded, mask, dummy, decode=True,
                       max_decode_length=length, method=Transformer.decode,
                       mutable=["cache"])[1]["cache"]

  @functools.partial(jax.jit, static_argnames="length")
  def step(p, cache, encoded, mask, token, length):
    logits, variables = model.apply(
        {"params": p, "cache": cache}, encoded, mask, token, decode=True,
        max_decode_length=length, method=Transformer.decode, mutable=["cache"])
    return logits, variables["cache"]
  return forward, encode, init_cache, step


def _our_logits(config, params, encoder, decoder):
  forward = _jitted(config)[0]
  return np.asarray(forward(params, jnp.asarray(encoder), jnp.asarray(decoder)))


def _untie(path):
  """Gives a saved HF directory its own `lm_head.weight`, like released T5 1.1."""
  tensors = load_file(str(path / "model.safetensors"))
  assert "lm_head.weight" not in tensors  # transformers 5 saved it tied
  generator = np.random.default_rng(123)
  tensors["lm_head.weight"] = generator.normal(
      size=tensors["shared.weight"].shape).astype(np.float32)
  save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
  config = json.loads((path / "config.json").read_text())
  config["tie_word_embeddings"] = False
  config.pop("scale_decoder_outputs", None)  # as written by transformers 4
  (path / "config.json").write_text(json.dumps(config))
  return tensors["lm_head.weight"], tensors["shared.weight"]


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
  """(HF reference model, its directory, our config, our params)."""
  path = tmp_path_factory.mktemp("hf_untied")
  _hf_model(seed=0).save_pretrained(path)
  lm_head, shared = _untie(path)
  reference = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
  # The reference really is untied and unscaled, as T5 1.1 is.
  np.testing.assert_array_equal(reference.lm_head.weight.detach().numpy(), lm_head)
  np.testing.assert_array_equal(reference.shared.weight.detach().numpy(), shared)
  assert reference.lm_head.weight.data_ptr() != reference.shared.weight.data_ptr()
  assert reference.config.scale_decoder_outputs is False
  config, params = checkpoints.load(path)
  return reference, path, config, params


def test_relative_position_buckets_match_transformers():
  relative = torch.arange(-300, 301)[None, :]
  for buckets, distance in ((32, 128), (4, 8), (64, 256)):
    for bidirectional in (True, False):
      ours = layers.relative_position_bucket(relative.numpy(), bidirectional, buckets,
                                             distance)
      theirs = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
          relative, bidirectional=bidirectional, num_buckets=buckets,
          max_distance=distance).numpy()
      np.testing.assert_array_equal(ours, theirs, err_msg=f"{buckets},{distance}")


def test_teacher_forced_logits_match(untied):
  reference, _, config, params = untied
  assert (config.emb_dim, config.head_dim, config.num_decoder_layers) == (32, 6, 3)
  encoder, decoder = _inputs()
  hf_logits, hf_encoded = _hf_outputs(reference, encoder, decoder)
  encoded, mask = _jitted(config)[1](params, jnp.asarray(encoder))
  real = encoder != 0
  np.testing.assert_array_equal(np.asarray(mask), real)
  encoder_error = np.abs(np.asarray(encoded) - hf_encoded)[real].max()
  assert encoder_error <= TOLERANCE, encoder_error
  ours = _our_logits(config, params, encoder, decoder)
  assert np.abs(hf_logits).max() > 1.0  # a meaningful comparison, not all ~0
  error = np.abs(ours - hf_logits).max()
  assert error <= TOLERANCE, error


def test_incremental_decoding_matches(untied):
  reference, _, config, params = untied
  encoder, decoder = _inputs(seed=1)
  hf_logits, _ = _hf_outputs(reference, encoder, decoder)
  _, encode, init_cache, step = _jitted(config)
  encoded, mask = encode(params, jnp.asarray(encoder))
  # The first decode=True call on a full-length input only creates the cache.
  cache = init_cache(params, encoded, mask, length=DECODER_LENGTH)
  errors = []
  for position in range(DECODER_LENGTH):
    token = jnp.asarray(decoder[:, position:position + 1])
    logits, cache = step(params, cache, encoded, mask, token, length=DECODER_LENGTH)
    errors.append(np.abs(np.asarray(logits[:, 0]) - hf_logits[:, position]).max())
  assert int(cache["decoder"]["layers_0"]["self_attention"]["cache_index"]) == \
      DECODER_LENGTH
  assert max(errors) <= TOLERANCE, errors


def test_pytorch_bin_weights_only_path(untied, tmp_path):
  reference, path, config, params = untied
  torch.save(reference.state_dict(), str(tmp_path / "pytorch_model.bin"))
  (tmp_path / "config.json").write_text((path / "config.json").read_text())
  assert checkpoints.detect_format(tmp_path) == "huggingface"
  config_bin, params_bin = checkpoints.load(tmp_path)
  assert config_bin == config
  for got, want in zip(jax.tree_util.tree_leaves(params_bin),
                       jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(got, want)
  encoder, decoder = _inputs(seed=2)
  hf_logits, _ = _hf_outputs(reference, encoder, decoder)
  error = np.abs(_our_logits(config_bin, params_bin, encoder, decoder) -
                 hf_logits).max()
  assert error <= TOLERANCE, error


@pytest.mark.parametrize("tie_word_embeddings,keep_scale_key,scaled", [
    (False, True, False), (True, True, True), (True, False, True)], ids=[
        "tied-by-transformers5-unscaled", "original-t5-scaled",
        "original-t5-scaled-transformers4-config"])
def test_tied_checkpoints_match(tmp_path, tie_word_embeddings, keep_scale_key, scaled):
  """No `lm_head.weight` in the file: the output layer is `shared`, scaled by
  d_model**-0.5 when the config says so (original T5; transformers 4 configs
  imply it by `tie_word_embeddings: true` alone)."""
  model = _hf_model(seed=3, tie_word_embeddings=tie_word_embeddings)
  model.save_pretrained(tmp_path)
  assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
  if not keep_scale_key:
    hf_config = json.loads((tmp_path / "config.json").read_text())
    del hf_config["scale_decoder_outputs"]
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
  reference = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
  assert reference.config.scale_decoder_outputs is scaled
  config, params = checkpoints.load(tmp_path)
  encoder, decoder = _inputs(seed=3)
  hf_logits, _ = _hf_outputs(reference, encoder, decoder)
  error = np.abs(_our_logits(config, params, encoder, decoder) - hf_logits).max()
  assert error <= TOLERANCE, error


def test_save_huggingface_is_loadable_by_transformers(untied, tmp_path):
  reference, _, config, params = untied
  checkpoints.save_huggingface(tmp_path, params, config)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
  assert reloaded.config.scale_decoder_outputs is False
  assert reloaded.lm_head.weight.data_ptr() != reloaded.shared.weight.data_ptr()
  reference_state = reference.state_dict()
  for name, value in reloaded.state_dict().items():
    np.testing.assert_array_equal(value.numpy(), reference_state[name].numpy(),
                                  err_msg=name)
  encoder, decoder = _inputs(seed=4)
  np.testing.assert_array_equal(_hf_outputs(reloaded, encoder, decoder)[0],
                                _hf_outputs(reference, encoder, decoder)[0])
