"""LoRA and IA3 adapters in Hugging Face PEFT's format, out and in.

A PEFT adapter directory holds `adapter_config.json` and `adapter_model.safetensors`
with one tensor per adapted torch `Linear` of `T5ForConditionalGeneration`, named
by module (see `checkpoints/huggingface.py` for the module names):

  LoRA  base_model.model.<module>.lora_A.weight [r, in]    ← ours …/lora_a [in, r] ᵀ
        base_model.model.<module>.lora_B.weight [out, r]   ← ours …/lora_b [r, out] ᵀ
        config: r, lora_alpha (scale alpha / r), lora_dropout, target_modules
  IA3   base_model.model.<module>.ia3_l [out, 1]  (key / value: scales outputs)
        base_model.model.<module>.ia3_l [1, in]   (feed-forward `wo`: scales inputs)
        config: target_modules, feedforward_modules

`target_modules` is written as the full list of module names, so PEFT adapts exactly
the modules we trained (also when the regexes chose a subset). Reading refuses
adapter variants that the methods here do not compute (DoRA, rsLoRA, per-module
ranks, LoRA biases, fan_in_fan_out, modules other than T5's linear layers) instead
of loading something different. This module works on flat `{T5X path: array}`
dicts and knows nothing of the methods.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

from prompt_tuning.checkpoints.errors import CheckpointError
from prompt_tuning.checkpoints.huggingface import name_map
from prompt_tuning.models.config import T5Config

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
PathLike = Any
Flat = Dict[str, np.ndarray]


class PeftAdapterError(CheckpointError):
  """A PEFT adapter directory cannot be read as LoRA / IA3 of this T5."""


def module_names(config: T5Config) -> Dict[str, str]:
  """`{our Dense module path: HF module name}`, e.g.
  `encoder/layers_0/attention/query` → `encoder.block.0.layer.0.SelfAttention.q`."""
  out = {}
  for path, (hf, transpose) in name_map(config).items():
    if path.endswith("/kernel") and transpose and hf.endswith(".weight"):
      out[path[: -len("/kernel")]] = hf[: -len(".weight")]
  return out


def _config_common(targets: Sequence[str], base_model: str | None) -> Dict[str, Any]:
  return {"task_type": "SEQ_2_SEQ_LM", "target_modules": sorted(targets),
          "base_model_name_or_path": base_model, "inference_mode": True,
          "modules_to_save": None, "revision": None, "fan_in_fan_out": False,
          "exclude_modules": None, "auto_mapping": None}


def _modules_with(flat: Mapping[str, Any], suffix: str) -> Sequence[str]:
  return sorted(p[: -len(suffix) - 1] for p in flat if p.endswith("/" + suffix))


def _hf_name(names: Mapping[str, str], module: str) -> str:
  if module not in names:
    raise PeftAdapterError(f"{module} has no Hugging Face counterpart; PEFT adapters "
                           "cover the attention and MLP kernels only.")
  return names[module]


def _write(directory: PathLike, tensors: Dict[str, np.ndarray],
           adapter_config: Dict[str, Any]) -> str:
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
            os.path.join(directory, ADAPTER_WEIGHTS), metadata={"format": "pt"})
  with open(os.path.join(directory, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
    json.dump(adapter_config, f, indent=2, sort_keys=True)
  return directory


def save_lora(directory: PathLike, flat: Mapping[str, Any], config: T5Config, *,
              alpha: float, dropout_rate: float = 0.0,
              base_model: str | None = None) -> str:
  """Writes the `…/lora_a`, `…/lora_b` entries of `flat` as a PEFT LoRA adapter."""
  names = module_names(config)
  modules = _modules_with(flat, "lora_a")
  if not modules:
    raise PeftAdapterError("No LoRA parameters (…/lora_a) to export.")
  tensors, ranks = {}, set()
  for module in modules:
    hf = _hf_name(names, module)
    a, b = np.asarray(flat[f"{module}/lora_a"]), np.asarray(flat[f"{module}/lora_b"])
    ranks.add(a.shape[1])
    tensors[f"{PREFIX}{hf}.lora_A.weight"] = a.T
    tensors[f"{PREFIX}{hf}.lora_B.weight"] = b.T
  if len(ranks) != 1:
    raise PeftAdapterError(f"LoRA factors have several ranks {sorted(ranks)}.")
  rank = ranks.pop()
  adapter_config = {**_config_common([names[m] for m in modules], base_model),
                    "peft_type": "LORA", "r": int(rank), "lora_alpha": float(alpha),
                    "lora_dropout": float(dropout_rate), "bias": "none",
                    "use_rslora": False, "use_dora": False, "init_lora_weights": True,
                    "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
                    "layers_pattern": None, "lora_bias": False}
  return _write(directory, tensors, adapter_config)


def save_ia3(directory: PathLike, flat: Mapping[str, Any], config: T5Config, *,
             input_modules: Sequence[str], base_model: str | None = None) -> str:
  """Writes the `…/ia3_scale` entries of `flat` as a PEFT IA3 adapter.

  `input_modules`: our module paths whose inputs are scaled (PEFT's
  `feedforward_modules`); the others scale their outputs.
  """
  names = module_names(config)
  modules = _modules_with(flat, "ia3_scale")
  if not modules:
    raise PeftAdapterError("No IA3 parameters (…/ia3_scale) to export.")
  tensors, feedforward = {}, []
  for module in modules:
    hf = _hf_name(names, module)
    scale = np.asarray(flat[f"{module}/ia3_scale"])
    if module in input_modules:
      feedforward.append(hf)
      tensors[f"{PREFIX}{hf}.ia3_l"] = scale[None, :]
    else:
      tensors[f"{PREFIX}{hf}.ia3_l"] = scale[:, None]
  adapter_config = {**_config_common([names[m] for m in modules], base_model),
                    "peft_type": "IA3", "feedforward_modules": sorted(feedforward),
                    "init_ia3_weights": True}
  return _write(directory, tensors, adapter_config)


# ---------------------------------------------------------------- reading


def read_adapter_config(directory: PathLike) -> Dict[str, Any]:
  path = os.path.join(os.fspath(directory), ADAPTER_CONFIG)
  try:
    with open(path, encoding="utf-8") as f:
      adapter_config = json.load(f)
  except (OSError, ValueError) as e:
    raise PeftAdapterError(f"{path}: not a readable PEFT adapter config "
                           f"({type(e).__name__}: {e}).") from e
  if not isinstance(adapter_config, dict):
    raise PeftAdapterError(f"{path}: expected a JSON object.")
  return adapter_config


def _read_tensors(directory: PathLike) -> Dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.fspath(directory), ADAPTER_WEIGHTS)
  if not os.path.isfile(path):
    raise PeftAdapterError(f"{directory}: no {ADAPTER_WEIGHTS} (save the adapter with "
                           "safe_serialization=True).")
  try:
    return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}
  except Exception as e:  # pylint: disable=broad-except  # malformed file
    raise PeftAdapterError(f"{path}: not a readable safetensors file ({e}).") from e


def _split_key(key: str, suffix: str, by_hf: Mapping[str, str], directory) -> str:
  """`base_model.model.<module>.<suffix>` → our module path."""
  if not key.startswith(PREFIX) or not key.endswith("." + suffix):
    raise PeftAdapterError(f"{directory}: unexpected tensor {key!r} (expected "
                           f"'{PREFIX}<module>.{suffix}').")
  hf = key[len(PREFIX): -len(suffix) - 1]
  if hf not in by_hf:
    raise PeftAdapterError(f"{directory}: {key!r} adapts {hf!r}, which is not a "
                           "linear layer of this T5 (wrong model size or family?).")
  return by_hf[hf]


def _expect(adapter_config, directory, peft_type):
  if adapter_config.get("peft_type") != peft_type:
    raise PeftAdapterError(f"{directory}: peft_type is "
                           f"{adapter_config.get('peft_type')!r}, expected {peft_type!r}.")
  if adapter_config.get("fan_in_fan_out"):
    raise PeftAdapterError(f"{directory}: fan_in_fan_out adapters (GPT-2 Conv1D) are "
                           "not T5's layout.")


def load_lora(directory: PathLike, config: T5Config) -> Tuple[Flat, Dict[str, Any]]:
  """A PEFT LoRA adapter → (`{…/lora_a, …/lora_b: array}`, settings).

  settings: `rank`, `alpha`, `dropout_rate`, `targets` (one escaped regex per
  adapted module), ready for `methods.lora.lora(**settings)`.
  """
  adapter_config = read_adapter_config(directory)
  _expect(adapter_config, directory, "LORA")
  unsupported = {k: adapter_config.get(k) for k in (
      "use_dora", "use_rslora", "rank_pattern", "alpha_pattern", "lora_bias")
                 if adapter_config.get(k)}
  if adapter_config.get("bias", "none") != "none":
    unsupported["bias"] = adapter_config["bias"]
  if unsupported:
    raise PeftAdapterError(f"{directory}: LoRA variant {unsupported} is not supported; "
                           "only plain LoRA (alpha / r scaling, no biases).")
  rank, alpha = adapter_config.get("r"), adapter_config.get("lora_alpha")
  if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)):
    raise PeftAdapterError(f"{directory}: needs integer r >= 1 and a numeric "
                           f"lora_alpha, found r={rank!r}, lora_alpha={alpha!r}.")
  by_hf = {hf: ours for ours, hf in module_names(config).items()}
  flat: Flat = {}
  for key, value in _read_tensors(directory).items():
    if key.endswith(".lora_A.weight"):
      module = _split_key(key, "lora_A.weight", by_hf, directory)
      flat[f"{module}/lora_a"] = value.T
    elif key.endswith(".lora_B.weight"):
      module = _split_key(key, "lora_B.weight", by_hf, directory)
      flat[f"{module}/lora_b"] = value.T
    else:
      raise PeftAdapterError(f"{directory}: unexpected tensor {key!r} in a LoRA "
                             "adapter.")
  modules = _modules_with(flat, "lora_a")
  for module in modules:
    a, b = flat[f"{module}/lora_a"], flat.get(f"{module}/lora_b")
    if b is None or a.shape[1] != rank or b.shape[0] != rank:
      raise PeftAdapterError(f"{directory}: {module} needs lora_A [r={rank}, in] and "
                             f"lora_B [out, r={rank}]; found {a.shape[::-1]} and "
                             f"{None if b is None else b.shape[::-1]}.")
  if not modules or len(_modules_with(flat, "lora_b")) != len(modules):
    raise PeftAdapterError(f"{directory}: LoRA tensors are missing or unpaired.")
  settings = {"rank": rank, "alpha": float(alpha),
              "dropout_rate": float(adapter_config.get("lora_dropout") or 0.0),
              "targets": tuple(re.escape(m) for m in modules)}
  return flat, settings


def load_ia3(directory: PathLike, config: T5Config) -> Tuple[Flat, Dict[str, Any]]:
  """A PEFT IA3 adapter → (`{…/ia3_scale: array}`, settings).

  settings: `output_targets` and `input_targets` (escaped module paths), ready for
  `methods.ia3.ia3(**settings)`.
  """
  adapter_config = read_adapter_config(directory)
  _expect(adapter_config, directory, "IA3")
  by_hf = {hf: ours for ours, hf in module_names(config).items()}
  flat: Flat = {}
  inputs, outputs = [], []
  for key, value in _read_tensors(directory).items():
    module = _split_key(key, "ia3_l", by_hf, directory)
    if value.ndim != 2 or 1 not in value.shape:
      raise PeftAdapterError(f"{directory}: {key} has shape {list(value.shape)}; "
                             "expected [out, 1] or [1, in].")
    if value.shape[0] == 1 and value.shape[1] != 1:
      inputs.append(module)
    else:
      outputs.append(module)
    flat[f"{module}/ia3_scale"] = value.reshape(-1)
  if not flat:
    raise PeftAdapterError(f"{directory}: the adapter holds no ia3_l tensors.")
  feedforward = set(adapter_config.get("feedforward_modules") or [])
  for module in inputs:  # PEFT shapes feed-forward scales [1, in]: check the config
    hf = module_names(config)[module]
    if not any(hf == f or hf.endswith("." + f) for f in feedforward):
      raise PeftAdapterError(f"{directory}: {hf} is stored as an input scale but is "
                             "not among feedforward_modules.")
  to_regexes = lambda ms: tuple(re.escape(m) for m in sorted(ms)) or (r"(?!)",)
  return flat, {"output_targets": to_regexes(outputs), "input_targets": to_regexes(inputs)}
