"""Gin registrations of the decoder-only model configs (library modules stay gin-free).

Imported by `configs/models/{gpt2,llama,mistral,qwen2,phi3}_*.gin`:

  MODEL_CONFIG = @gpt2_preset()      gpt2_preset.name = 'small'
  MODEL_CONFIG = @llama_preset()     llama_preset.name = 'llama3_8b'
  (or @GPT2Config() / @LlamaConfig() with every field bound)

The model family is the type of MODEL_CONFIG (`prompt_tuning.models.families`).
"""
import gin
import jax.numpy as jnp

from prompt_tuning.models import decoder_config


def _dtype(overrides):
  if isinstance(overrides.get("dtype"), str):
    overrides["dtype"] = jnp.dtype(overrides["dtype"]).type
  if isinstance(overrides.get("rope_scaling"), dict):
    overrides["rope_scaling"] = tuple(sorted(overrides["rope_scaling"].items()))
  return overrides


def _gpt2_preset(name: str, **overrides) -> decoder_config.GPT2Config:
  """`decoder_config.gpt2_preset`, also taking dtype names from gin."""
  return decoder_config.gpt2_preset(name, **_dtype(overrides))


def _llama_preset(name: str, **overrides) -> decoder_config.LlamaConfig:
  """`decoder_config.llama_preset`, also taking dtype names and a rope_scaling dict."""
  return decoder_config.llama_preset(name, **_dtype(overrides))


gpt2_preset = gin.external_configurable(_gpt2_preset, "gpt2_preset")
llama_preset = gin.external_configurable(_llama_preset, "llama_preset")
GPT2Config = gin.external_configurable(decoder_config.GPT2Config, "GPT2Config")
LlamaConfig = gin.external_configurable(decoder_config.LlamaConfig, "LlamaConfig")
