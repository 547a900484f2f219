"""GPT-2: presets, logical axes, the method hooks' semantics, position limits."""
import jax.numpy as jnp
import pytest

import decoder_testlib as lib
from prompt_tuning.models import families
from prompt_tuning.models.decoder_config import GPT2_PRESETS, GPT2Config, gpt2_preset

# Published totals of the released checkpoints (GPT2LMHeadModel, tied head).
PUBLISHED = {"small": 124_439_808, "medium": 354_823_168, "large": 774_030_080,
             "xl": 1_557_611_200}
TINY = gpt2_preset("tiny", n_embd=24, n_head=3, dropout_rate=0.0)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts(name):
  assert lib.parameter_count(GPT2_PRESETS[name]) == PUBLISHED[name]


def test_every_parameter_has_logical_axes():
  lib.assert_logical_axes_everywhere(TINY)


def test_prompt_occupies_positions_before_the_input():
  lib.prompt_equals_tokens(TINY)


def test_prefix_acts_as_past_key_values():
  lib.prefix_equals_past(TINY)


def test_positions_beyond_the_table_are_refused():
  model, params = lib.init(TINY.replace(n_positions=8))
  with pytest.raises(ValueError, match="8 position embeddings"):
    model.apply({"params": params}, jnp.ones((1, 9), jnp.int32))
  with pytest.raises(ValueError, match="cache_length"):
    model.apply({"params": params}, jnp.ones((1, 3), jnp.int32), cache_length=9,
                method=model.prefill, mutable=["cache"])


def test_config_round_trip_and_errors():
  assert families.config_from_dict(TINY.to_dict()) == TINY
  with pytest.raises(ValueError, match="n_head"):
    GPT2Config(n_embd=10, n_head=3)
  with pytest.raises(ValueError, match="Unknown GPT-2 preset"):
    gpt2_preset("huge")
