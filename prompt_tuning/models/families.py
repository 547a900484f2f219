"""One place that maps a model config to its network: the model family is the type
of the config dataclass (`T5Config`, `GPT2Config`, `LlamaConfig`).

  build(config, prompt=None, prefix=None) -> the Flax module with the method hooks
  init_inputs(config)                     -> dummy inputs for `module.init`
  config_from_dict(values)                -> the config recorded by `to_dict()`
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import flax.linen as nn
import jax.numpy as jnp

from prompt_tuning.models.config import T5Config
from prompt_tuning.models.decoder_config import GPT2Config, LlamaConfig
from prompt_tuning.models.gpt2 import GPT2LMHeadModel
from prompt_tuning.models.llama import LlamaForCausalLM
from prompt_tuning.models.t5 import Transformer

ModelConfig = Union[T5Config, GPT2Config, LlamaConfig]
DECODER_ONLY = (GPT2Config, LlamaConfig)
_NETWORKS = {T5Config: Transformer, GPT2Config: GPT2LMHeadModel,
             LlamaConfig: LlamaForCausalLM}
_BY_FAMILY = {"t5": T5Config, "gpt2": GPT2Config, "llama": LlamaConfig}
# Per family: the frozen token embedding table, and the scope the prompt hook lives
# in (prompt tuning's prompt is `<scope>/prompt`, a bank's `<scope>/prompts`).
_EMBEDDING = {T5Config: "token_embedder/embedding",
              GPT2Config: "transformer/wte/embedding",
              LlamaConfig: "model/embed_tokens/embedding"}
_PROMPT_SCOPE = {T5Config: "encoder/prompt", GPT2Config: "transformer/prompt",
                 LlamaConfig: "model/prompt"}


def _network(config: ModelConfig):
  network = _NETWORKS.get(type(config))
  if network is None:
    raise TypeError(f"No model family for a {type(config).__name__}; expected one "
                    f"of {[c.__name__ for c in _NETWORKS]}.")
  return network


def build(config: ModelConfig, prompt: Optional[nn.Module] = None,
          prefix: Optional[nn.Module] = None,
          adapter: Optional[nn.Module] = None) -> nn.Module:
  """The frozen network of `config`'s family with the given method hooks.

  `adapter` (kernels adapted in place): LoRA and IA3 on every family; per-layer
  prompts rewrite T5 encoder layers only, so a decoder-only config refuses an
  adapter that does not declare `supports_decoder_only`.
  """
  network = _network(config)
  if adapter is None:
    return network(config, prompt=prompt, prefix=prefix)
  if is_decoder_only(config) and not getattr(adapter, "supports_decoder_only", False):
    raise ValueError(
        f"The adapter method {type(adapter).__name__} (per-layer prompts) is "
        f"implemented for T5 models only, not for {type(config).__name__}; use "
        "prompt tuning, prefix tuning, LoPA, LoRA, IA3 or model tuning with this model.")
  return network(config, prompt=prompt, prefix=prefix, adapter=adapter)


def is_decoder_only(config: ModelConfig) -> bool:
  return isinstance(config, DECODER_ONLY)


def embedding_path(config: ModelConfig) -> str:
  """Where the frozen token embedding `[V, H]` is in the parameter tree."""
  _network(config)
  return _EMBEDDING[type(config)]


def prompt_scope(config: ModelConfig) -> str:
  """Where the prompt hook's parameters live (`encoder/prompt`, `model/prompt`, …)."""
  _network(config)
  return _PROMPT_SCOPE[type(config)]


def prompt_scope_in(params: Dict[str, Any]) -> str:
  """The prompt scope of a parameter tree (the family whose top-level scope it has)."""
  for scope in _PROMPT_SCOPE.values():
    parent, name = scope.split("/")
    if parent in params and name in params[parent]:
      return scope
  raise KeyError(f"No prompt in the parameters (looked for "
                 f"{sorted(_PROMPT_SCOPE.values())}).")


def init_inputs(config: ModelConfig) -> Tuple[Any, ...]:
  """Positional inputs that make `build(config).init` create every parameter."""
  _network(config)
  tokens = jnp.ones((1, 4), jnp.int32)
  return (tokens,) if is_decoder_only(config) else (tokens, tokens)


def config_from_dict(values: Dict[str, Any]) -> ModelConfig:
  """Inverse of `config.to_dict()`; a dict without `family` is a T5Config."""
  family = values.get("family", "t5")
  if family not in _BY_FAMILY:
    raise ValueError(f"Unknown model family {family!r}; known: {sorted(_BY_FAMILY)}.")
  values = dict(values)
  if family == "t5":
    values.pop("family", None)
  return _BY_FAMILY[family].from_dict(values)
