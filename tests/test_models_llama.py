"""Llama family: presets, logical axes, the method hooks' semantics, config checks."""
import jax.numpy as jnp
import numpy as np
import pytest

import decoder_testlib as lib
from prompt_tuning.models import families
from prompt_tuning.models.decoder_config import (LLAMA_PRESETS, LlamaConfig,
                                                 llama_preset)
from prompt_tuning.models.decoder_layers import rope_frequencies

# Published totals of the released checkpoints.
PUBLISHED = {
    "llama2_7b": 6_738_415_616, "llama2_13b": 13_015_864_320,
    "llama3_8b": 8_030_261_248, "llama3_1_8b": 8_030_261_248,
    "llama3_2_1b": 1_235_814_400, "mistral_7b": 7_241_732_096,
    "mistral_7b_v0_3": 7_248_023_552, "qwen2_0_5b": 494_032_768,
    "qwen2_7b": 7_615_616_512, "phi3_mini": 3_821_079_552,
}
TINY = llama_preset("tiny", hidden_size=36, num_attention_heads=6,
                    num_key_value_heads=2)
VARIANTS = {
    "gqa": TINY,
    "qwen2-like": TINY.replace(attention_bias=True, tie_word_embeddings=True),
    "window-partial-rope": TINY.replace(sliding_window=3, partial_rotary_factor=0.5,
                                        head_dim_override=8),
    "llama3-rope": TINY.replace(rope_scaling=(
        ("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
        ("original_max_position_embeddings", 16), ("rope_type", "llama3"))),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts(name):
  assert lib.parameter_count(LLAMA_PRESETS[name]) == PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_parameter_has_logical_axes(name):
  lib.assert_logical_axes_everywhere(VARIANTS[name])


@pytest.mark.parametrize("name", ["gqa", "window-partial-rope"])
def test_prompt_occupies_positions_before_the_input(name):
  lib.prompt_equals_tokens(VARIANTS[name])


@pytest.mark.parametrize("name", ["gqa", "qwen2-like"])
def test_prefix_acts_as_past_key_values(name):
  lib.prefix_equals_past(VARIANTS[name])


def test_left_padding_does_not_change_real_logits():
  model, params = lib.init(TINY)
  tokens = np.random.default_rng(0).integers(1, TINY.vocab_size, (1, 6))
  padded = np.concatenate([np.zeros((1, 3), int), tokens], axis=1)
  got = lib.apply(model, {"params": params}, jnp.asarray(padded))
  want = lib.apply(model, {"params": params}, jnp.asarray(tokens))
  np.testing.assert_allclose(got[:, 3:], want, atol=1e-5, rtol=1e-5)


def test_rope_scalings_differ_where_they_should():
  plain = rope_frequencies(8, 10000.0, {}, 16, 8)
  linear = rope_frequencies(8, 10000.0, {"rope_type": "linear", "factor": 4.0}, 16, 8)
  np.testing.assert_allclose(linear, plain / 4, rtol=1e-6)
  dynamic = {"rope_type": "dynamic", "factor": 2.0}
  np.testing.assert_array_equal(rope_frequencies(8, 10000.0, dynamic, 16, 16), plain)
  assert np.all(rope_frequencies(8, 10000.0, dynamic, 16, 32)[1:] < plain[1:])
  with pytest.raises(ValueError, match="yarn"):
    rope_frequencies(8, 10000.0, {"rope_type": "yarn"}, 16, 8)


def test_config_round_trip_and_errors():
  config = VARIANTS["llama3-rope"]
  assert families.config_from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match="num_key_value_heads"):
    LlamaConfig(num_attention_heads=6, num_key_value_heads=4)
  with pytest.raises(ValueError, match="longrope"):
    LlamaConfig(rope_scaling=(("rope_type", "longrope"),))
