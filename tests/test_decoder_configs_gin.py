"""Every decoder-only model gin file parses into its family's config: the preset
the file names, with the dtype and dropout macros applied; the prompt-tuning
method then builds that family's network."""
import gin
import jax.numpy as jnp
import pytest
import transformers

import decoder_testlib as lib
from prompt_tuning.methods.prompt import prompt_tuning
from prompt_tuning.models.decoder_config import (GPT2_PRESETS, LLAMA_PRESETS,
                                                 GPT2Config, LlamaConfig)
from prompt_tuning.models.gpt2 import GPT2LMHeadModel
from prompt_tuning.models.llama import LlamaForCausalLM

from conftest import REPO_ROOT

MODELS = REPO_ROOT / "configs" / "models"
FILES = sorted(p for p in MODELS.glob("*.gin")
               if p.name.startswith(("gpt2_", "llama_", "mistral_", "qwen2_", "phi3_")))


@gin.configurable("decoder_gin_probe")
def probe(config=gin.REQUIRED):
  return config


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _parse(path, bindings=()):
  gin.parse_config_files_and_bindings(
      [str(path)], list(bindings) + ["decoder_gin_probe.config = %MODEL_CONFIG"],
      finalize_config=False)
  return probe()


def test_the_expected_files_exist():
  names = {p.stem for p in FILES}
  assert {"gpt2_small", "gpt2_medium", "gpt2_large", "gpt2_xl", "llama_3_8b",
          "mistral_7b", "qwen2_7b", "phi3_mini", "gpt2_tiny", "llama_tiny"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_model_gin_binds_its_preset(path):
  config = _parse(path)
  presets = GPT2_PRESETS if path.name.startswith("gpt2_") else LLAMA_PRESETS
  name = gin.query_parameter(("gpt2_preset" if isinstance(config, GPT2Config)
                              else "llama_preset") + ".name")
  assert config == presets[name].replace(dropout_rate=config.dropout_rate)


def test_overrides_and_family_choice():
  config = _parse(MODELS / "llama_tiny.gin", ["ACTIVATION_DTYPE = 'bfloat16'",
                                             "llama_preset.num_hidden_layers = 3"])
  assert isinstance(config, LlamaConfig)
  assert config.dtype == jnp.bfloat16 and config.num_hidden_layers == 3
  assert isinstance(prompt_tuning(length=2).build(config), LlamaForCausalLM)
  gin.clear_config()
  config = _parse(MODELS / "gpt2_tiny.gin")
  model = prompt_tuning(length=2).build(config)
  assert isinstance(model, GPT2LMHeadModel)
  reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=config.vocab_size, n_positions=config.n_positions,
      n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head))
  assert lib.parameter_count(config) == sum(p.numel() for p in reference.parameters())
