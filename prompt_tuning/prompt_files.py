"""Trained method parameters out, and prompts back in: numpy and Hugging Face PEFT.

  save_numpy(directory, method, params)   every `Method.exported` array as
                                          `<name>.npy` (e.g. encoder.prompt.prompt.npy
                                          `[P, H]`, the released prompts' format)
  save_prompt(path, prompt)               one `[P, H]` prompt as `.npy`
  save_peft(directory, prompt, config)    a PEFT prompt-tuning adapter directory:
                                          adapter_config.json + adapter_model.safetensors
                                          holding `prompt_embeddings` `[P, H]`
  load_peft(directory)                    → the `[P, H]` float32 prompt of an adapter

PEFT's seq2seq prompt tuning prepends the virtual tokens to the encoder input
embeddings and extends the attention mask with ones, exactly as prompt tuning here
('prefix' combination); the adapter is written with `num_transformer_submodules: 1`
so that PEFT stores only the encoder prompt. Adapters written by PEFT with the
seq2seq default of 2 submodules hold `[2P, H]`; their first P rows are the encoder
prompt (the rest is never used by PEFT's prompt tuning) and are what `load_peft`
returns. `prompt_init.from_file` accepts an adapter directory too, so training
continues from a PEFT prompt with `PROMPT_FILE = '/path/adapter_dir'`.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Union

import numpy as np

from prompt_tuning.methods.base import Method
from prompt_tuning.params import Params
from prompt_tuning.models.config import T5Config
from prompt_tuning.models import families

PathLike = Union[str, os.PathLike]
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_WEIGHTS_BIN = "adapter_model.bin"
PEFT_KEY = "prompt_embeddings"


class PeftFormatError(ValueError):
  """A directory is not a usable PEFT prompt-tuning adapter; says what is wrong."""


# ---------------------------------------------------------------- numpy


def save_prompt(path: PathLike, prompt) -> str:
  """Writes a `[P, H]` prompt as float32 `.npy` (the released prompts' format)."""
  prompt = np.asarray(prompt, dtype=np.float32)
  if prompt.ndim != 2:
    raise ValueError(f"A prompt is [P, H]; got shape {list(prompt.shape)} for {path}.")
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "wb") as f:
    np.save(f, prompt, allow_pickle=False)
  return path


def save_numpy(directory: PathLike, method: Method, params: Params) -> Dict[str, str]:
  """Writes each of `method.exported(params)` as `<directory>/<name>.npy`.

  Returns:
    name → written path (empty for methods that export nothing, e.g. model tuning).
  """
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  written = {}
  for name, array in method.exported(params).items():
    path = os.path.join(directory, f"{name}.npy")
    with open(path, "wb") as f:
      np.save(f, np.asarray(array), allow_pickle=False)
    written[name] = path
  return written


# ---------------------------------------------------------------- PEFT


def peft_config(num_virtual_tokens: int, token_dim: int,
                config: Optional[T5Config] = None,
                base_model_name_or_path: Optional[str] = None) -> Dict[str, object]:
  """The `adapter_config.json` of a PEFT prompt-tuning adapter: seq2seq for T5,
  CAUSAL_LM for a decoder-only config (GPT-2, Llama family)."""
  causal = config is not None and families.is_decoder_only(config)
  layers = (config.num_layers if causal else config.num_encoder_layers) if config else None
  return {
      "peft_type": "PROMPT_TUNING",
      "task_type": "CAUSAL_LM" if causal else "SEQ_2_SEQ_LM",
      "num_virtual_tokens": int(num_virtual_tokens),
      "token_dim": int(token_dim),
      "num_transformer_submodules": 1,  # the encoder only, as in Lester et al.
      "num_attention_heads": config.num_heads if config else None,
      "num_layers": layers,
      "prompt_tuning_init": "RANDOM",
      "prompt_tuning_init_text": None,
      "tokenizer_name_or_path": None,
      "tokenizer_kwargs": None,
      "base_model_name_or_path": base_model_name_or_path,
      "revision": None,
      "inference_mode": True,
      "modules_to_save": None,
      "auto_mapping": None,
  }


def save_peft(directory: PathLike, prompt, config: Optional[T5Config] = None,
              base_model_name_or_path: Optional[str] = None) -> str:
  """Writes a `[P, H]` prompt as a PEFT prompt-tuning adapter directory.

  `peft.PeftModel.from_pretrained(T5ForConditionalGeneration, directory)` then
  prepends the same prompt to the encoder input. Returns the directory.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  prompt = np.ascontiguousarray(np.asarray(prompt, dtype=np.float32))
  if prompt.ndim != 2:
    raise ValueError(f"A prompt is [P, H]; got shape {list(prompt.shape)}.")
  if config is not None and prompt.shape[1] != config.emb_dim:
    raise ValueError(f"Prompt width {prompt.shape[1]} differs from the model width "
                     f"H = {config.emb_dim}.")
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  save_file({PEFT_KEY: prompt}, os.path.join(directory, ADAPTER_WEIGHTS),
            metadata={"format": "pt"})
  with open(os.path.join(directory, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
    json.dump(peft_config(prompt.shape[0], prompt.shape[1], config,
                          base_model_name_or_path), f, indent=2, sort_keys=True)
  return directory


def is_peft_dir(path: PathLike) -> bool:
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def load_peft(directory: PathLike) -> np.ndarray:
  """The encoder prompt `[P, H]` (float32) of a PEFT prompt-tuning adapter.

  Raises:
    PeftFormatError: no/invalid adapter_config.json, not PROMPT_TUNING, missing
      weights or `prompt_embeddings`, or a shape that disagrees with the config.
  """
  directory = os.fspath(directory)
  config_path = os.path.join(directory, ADAPTER_CONFIG)
  try:
    with open(config_path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise PeftFormatError(f"{config_path}: not a readable PEFT adapter config "
                          f"({type(e).__name__}: {e}).") from e
  if not isinstance(config, dict) or config.get("peft_type") != "PROMPT_TUNING":
    found = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
    raise PeftFormatError(f"{config_path}: peft_type is {found!r}; only "
                          f"'PROMPT_TUNING' adapters hold a soft prompt.")
  embeddings = _read_embeddings(directory)
  if embeddings.ndim != 2:
    raise PeftFormatError(f"{directory}: {PEFT_KEY} has shape {list(embeddings.shape)}; "
                          f"expected [num_virtual_tokens, token_dim].")
  num_tokens = int(config.get("num_virtual_tokens") or embeddings.shape[0])
  submodules = config.get("num_transformer_submodules")
  if submodules is None:  # PEFT's default: 2 for seq2seq, 1 otherwise
    submodules = 2 if config.get("task_type") == "SEQ_2_SEQ_LM" else 1
  expected = [num_tokens * int(submodules), config.get("token_dim", embeddings.shape[1])]
  if list(embeddings.shape) != expected:
    raise PeftFormatError(f"{directory}: {PEFT_KEY} has shape "
                          f"{list(embeddings.shape)} but adapter_config.json implies "
                          f"{expected} (num_virtual_tokens x num_transformer_submodules, "
                          f"token_dim).")
  return np.asarray(embeddings[:num_tokens], dtype=np.float32)


def _read_embeddings(directory: str) -> np.ndarray:
  weights = os.path.join(directory, ADAPTER_WEIGHTS)
  if os.path.isfile(weights):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      tensors = load_file(weights)
    except Exception as e:  # pylint: disable=broad-except  # malformed file
      raise PeftFormatError(f"{weights}: not a readable safetensors file ({e}).") from e
  elif os.path.isfile(os.path.join(directory, ADAPTER_WEIGHTS_BIN)):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise PeftFormatError(f"{directory} holds {ADAPTER_WEIGHTS_BIN}, which needs "
                            f"torch to read; install torch or save the adapter with "
                            f"safetensors.") from e
    state = torch.load(os.path.join(directory, ADAPTER_WEIGHTS_BIN), map_location="cpu",
                       weights_only=True)
    tensors = {k: v.float().numpy() for k, v in state.items()}
  else:
    raise PeftFormatError(f"{directory}: no {ADAPTER_WEIGHTS} (or "
                          f"{ADAPTER_WEIGHTS_BIN}) next to {ADAPTER_CONFIG}.")
  if PEFT_KEY not in tensors:
    raise PeftFormatError(f"{directory}: the adapter weights hold {sorted(tensors)}, "
                          f"not {PEFT_KEY!r}.")
  return np.asarray(tensors[PEFT_KEY])
