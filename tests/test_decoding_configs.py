"""configs/decoding/*.gin bind the decoders; the configured DECODE_FN decodes."""
import pathlib

import gin
import jax
import numpy as np
import pytest
from methods_testlib import random_params

from prompt_tuning.models import decoding
from prompt_tuning.models.config import preset
from prompt_tuning.models.t5 import Transformer

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs" / "decoding"


@gin.configurable("test_decoding_configs.holder")
def _holder(decode_fn=gin.REQUIRED):
  return decode_fn


def configured(name):
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [str(CONFIGS / name)], ["test_decoding_configs.holder.decode_fn = %DECODE_FN"])
  try:
    return _holder()
  finally:
    gin.clear_config()


@pytest.fixture(scope="module")
def tiny():
  model = Transformer(preset("tiny", vocab_size=64, dropout_rate=0.0))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 2, 64)
  return model, random_params(model, tokens, tokens[:, :2]), tokens


@pytest.mark.parametrize("name,direct", [
    ("greedy.gin", lambda m, p, t: decoding.greedy_decode(m, p, t,
                                                          max_decode_length=4)),
    ("beam.gin", lambda m, p, t: decoding.beam_search(
        m, p, t, max_decode_length=4, beam_size=4, alpha=0.6)[0]),
    ("sampling.gin", lambda m, p, t: decoding.sample_decode(
        m, p, t, rng=jax.random.PRNGKey(5), max_decode_length=4, top_p=0.95)),
])
def test_gin_decode_fn_matches_direct_call(tiny, name, direct):
  model, params, tokens = tiny
  decode_fn = configured(name)
  batch = {"encoder_input_tokens": tokens}
  rng = jax.random.PRNGKey(5) if name == "sampling.gin" else None
  got = decoding.predict(model, params, batch, decode_fn, max_decode_length=4, rng=rng)
  np.testing.assert_array_equal(got, direct(model, params, tokens))


def test_overrides_reach_the_decoder(tiny):
  """`--gin.decoding.beam_search.beam_size=1` (and alpha=0) makes beam.gin greedy."""
  model, params, tokens = tiny
  overrides = ["decoding.beam_search.beam_size = 1", "decoding.beam_search.alpha = 0.0"]
  gin.clear_config()
  gin.parse_config_files_and_bindings(
      [str(CONFIGS / "beam.gin")],
      overrides + ["test_decoding_configs.holder.decode_fn = %DECODE_FN"])
  try:
    assert gin.query_parameter("decoding.beam_search.beam_size") == 1
    decode_fn = _holder()
    got, _ = decode_fn(model, params, tokens, max_decode_length=4, eos_id=-1)
  finally:
    gin.clear_config()
  np.testing.assert_array_equal(
      got, decoding.greedy_decode(model, params, tokens, max_decode_length=4,
                                  eos_id=-1))
