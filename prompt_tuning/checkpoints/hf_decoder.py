"""Reads Hugging Face directories of decoder-only models: GPT-2 and the Llama family.

`config.json`'s `model_type` picks the family:
  gpt2                          → GPT2Config  (`GPT2LMHeadModel` / `GPT2Model`)
  llama, mistral, qwen2, phi3   → LlamaConfig (`*ForCausalLM`)
Weights are found and read as for T5 (`huggingface.py`: safetensors, sharded
index, `pytorch_model.bin` with `torch.load(weights_only=True)`), one tensor at a
time. Names map one to one onto the paths documented in `models/gpt2.py` and
`models/llama.py`:
  GPT-2   [transformer.]wte.weight → transformer/wte/embedding,
          [transformer.]h.i.attn.c_attn.weight [H, 3H] → …/c_attn/kernel [H, 3, H]
          (Conv1D weights are already [in, out]; no transpose), …
  Llama   model.layers.i.self_attn.q_proj.weight [N·D, H] → …/q_proj/kernel ᵀ, …
          lm_head.weight [V, H] → lm_head/kernel ᵀ (absent when tied)
  Phi-3   qkv_proj.weight rows [q | k | v] → q_proj, k_proj, v_proj;
          gate_up_proj.weight rows [gate | up] → gate_proj, up_proj.

Options a family's config may carry but this network does not implement (other
activations, MLP biases, YaRN / LongRoPE scaling, Qwen2's per-layer sliding
windows, …) are refused with an error naming the key, before any weight is read.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Tuple

import numpy as np
from etils import epath

from prompt_tuning.checkpoints import huggingface
from prompt_tuning.checkpoints.errors import CheckpointError
from prompt_tuning.checkpoints.tree import LazyTensor, Source
from prompt_tuning.models.decoder_config import ROPE_TYPES, GPT2Config, LlamaConfig

GPT2_TYPES = ("gpt2",)
LLAMA_TYPES = ("llama", "mistral", "qwen2", "phi3")
MODEL_TYPES = GPT2_TYPES + LLAMA_TYPES
Entry = Tuple[Any, ...]  # (shape, read, where[, read_slice]) from huggingface.py


def is_decoder_config(hf: Dict[str, Any]) -> bool:
  return hf.get("model_type") in MODEL_TYPES


# ----------------------------------------------------------------- config


def _refuse(path, key, value, why):
  raise CheckpointError(f"{path}/config.json has {key}={value!r}: {why}")


def _gpt2_fields(hf, path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  activation = hf.get("activation_function", "gelu_new")
  if activation not in ("gelu_new", "gelu_pytorch_tanh"):
    _refuse(path, "activation_function", activation,
            "only GPT-2's tanh-approximate GELU ('gelu_new') is implemented.")
  if hf.get("scale_attn_weights", True) is not True:
    _refuse(path, "scale_attn_weights", hf["scale_attn_weights"],
            "only scaled attention (GPT-2's default) is implemented.")
  if hf.get("add_cross_attention"):
    _refuse(path, "add_cross_attention", True, "cross-attention is not supported.")
  found = {
      "vocab_size": hf["vocab_size"],
      "n_positions": hf.get("n_positions", 1024),
      "n_embd": hf["n_embd"],
      "n_layer": hf["n_layer"],
      "n_head": hf["n_head"],
      "n_inner": hf.get("n_inner"),
      "layer_norm_epsilon": hf.get("layer_norm_epsilon", 1e-5),
      "scale_attn_by_inverse_layer_idx": bool(
          hf.get("scale_attn_by_inverse_layer_idx", False)),
  }
  return found, {"dropout_rate": hf.get("resid_pdrop", 0.1),
                 "bos_token_id": _bos(hf)}


def _rope(hf, path) -> Tuple[float, Any, float]:
  """(theta, rope_scaling pairs or None, partial_rotary_factor) from either the
  transformers-5 `rope_parameters` dict or the older `rope_theta`/`rope_scaling`."""
  params = dict(hf.get("rope_parameters") or {})
  scaling = dict(hf.get("rope_scaling") or {})
  theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
  partial = params.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  merged = {**scaling, **params}
  if "type" in merged and "rope_type" not in merged:
    merged["rope_type"] = merged.pop("type")
  merged.pop("type", None)
  rope_type = merged.get("rope_type", "default")
  if rope_type not in ROPE_TYPES:
    _refuse(path, "rope_type", rope_type,
            f"supported RoPE types are {list(ROPE_TYPES)} (not YaRN / LongRoPE).")
  if rope_type == "default":
    return float(theta), None, float(partial)
  keep = {"linear": ("factor",), "dynamic": ("factor",),
          "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                     "original_max_position_embeddings")}[rope_type]
  absent = [k for k in keep if k not in merged]
  if absent:
    _refuse(path, "rope_scaling", merged, f"{rope_type} RoPE needs {list(keep)}.")
  pairs = tuple(sorted({"rope_type": rope_type, **{k: merged[k] for k in keep}}
                       .items()))
  return float(theta), pairs, float(partial)


def _llama_fields(hf, path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  model_type = hf["model_type"]
  activation = hf.get("hidden_act", "silu")
  if activation != "silu":
    _refuse(path, "hidden_act", activation, "only SwiGLU ('silu') is implemented.")
  if hf.get("mlp_bias"):
    _refuse(path, "mlp_bias", True, "MLP biases are not implemented.")
  if model_type == "qwen2" and hf.get("use_sliding_window"):
    _refuse(path, "use_sliding_window", True,
            "Qwen2's per-layer sliding window is not implemented.")
  if model_type != "qwen2" and hf.get("attention_bias"):
    _refuse(path, "attention_bias", True, f"{model_type}'s attention_bias also adds "
            "an o_proj bias, which is not implemented (Qwen2's q/k/v biases are).")
  heads = hf["num_attention_heads"]
  theta, scaling, partial = _rope(hf, path)
  bias = model_type == "qwen2"
  window = hf.get("sliding_window") if model_type in ("mistral", "phi3") else None
  head_dim = hf.get("head_dim")
  found = {
      "vocab_size": hf["vocab_size"],
      "hidden_size": hf["hidden_size"],
      "intermediate_size": hf["intermediate_size"],
      "num_hidden_layers": hf["num_hidden_layers"],
      "num_attention_heads": heads,
      "num_key_value_heads": hf.get("num_key_value_heads") or heads,
      "head_dim_override": (head_dim if head_dim and
                            head_dim != hf["hidden_size"] // heads else None),
      "max_position_embeddings": hf.get("max_position_embeddings", 2048),
      "rms_norm_eps": hf.get("rms_norm_eps", 1e-6),
      "rope_theta": theta,
      "rope_scaling": scaling,
      "partial_rotary_factor": partial,
      "attention_bias": bias,
      "sliding_window": window,
      "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
  }
  return found, {"dropout_rate": hf.get("attention_dropout", 0.0),
                 "bos_token_id": _bos(hf)}


def _bos(hf: Dict[str, Any]) -> int:
  """config.json's `bos_token_id` (an int; absent or a list: 0)."""
  bos = hf.get("bos_token_id")
  return bos if isinstance(bos, int) and not isinstance(bos, bool) else 0


def config_fields(hf: Dict[str, Any], path) -> Tuple[type, Dict[str, Any],
                                                     Dict[str, Any]]:
  """(config class, architecture fields, run-time defaults) from `config.json`."""
  model_type = hf.get("model_type")
  if model_type in GPT2_TYPES:
    return (GPT2Config,) + _gpt2_fields(hf, path)
  if model_type in LLAMA_TYPES:
    return (LlamaConfig,) + _llama_fields(hf, path)
  raise CheckpointError(f"{path}/config.json has model_type {model_type!r}; "
                        f"decoder-only types are {list(MODEL_TYPES)}.")


# ----------------------------------------------------------------- weights


def _derive(entry: Entry, shape: tuple, fn: Callable[[np.ndarray], np.ndarray],
            note: str) -> LazyTensor:
  """A LazyTensor of `shape` computed by `fn` from one stored tensor."""
  _, read, where = entry[:3]  # huggingface entries may add a slice reader
  return LazyTensor(tuple(shape), lambda: fn(read()), f"{where} ({note})")


def _as_is(entry: Entry) -> LazyTensor:
  return LazyTensor(tuple(entry[0]), entry[1], entry[2])


def _transposed(entry: Entry) -> LazyTensor:
  return _derive(entry, tuple(reversed(entry[0])), lambda a: a.T, "transposed")


def _shared(entry: Entry, uses: int) -> Entry:
  """`entry` read once for `uses` readers (Phi-3's fused tensors feed 2–3
  parameters; the torch reader hands each tensor out only once). The array is
  dropped after the last reader."""
  held, left = [], [uses]
  shape, read, where = entry[:3]

  def read_shared():
    if not held:
      held.append(read())
    array = held[0]
    left[0] -= 1
    if not left[0]:
      held.clear()
    return array
  return shape, read_shared, where


def _rows(entry: Entry, start: int, stop: int) -> LazyTensor:
  """Rows [start, stop) of a `[out, in]` weight, transposed to `[in, stop-start]`."""
  shape = (entry[0][1] if len(entry[0]) == 2 else 0, stop - start)
  return _derive(entry, shape, lambda a: a[start:stop].T,
                 f"rows {start}:{stop}, transposed")


def _gpt2_source(tensors: Dict[str, Entry], config: GPT2Config
                 ) -> Tuple[Source, Dict[str, str]]:
  def find(name):
    for candidate in (f"transformer.{name}", name):
      if candidate in tensors:
        return candidate
    return None

  source, wanted = {}, {}

  def add(ours, hf_name, make=_as_is):
    wanted[ours] = f"transformer.{hf_name} or {hf_name}"
    found = find(hf_name)
    if found is not None:
      source[ours] = make(tensors[found])

  add("transformer/wte/embedding", "wte.weight")
  add("transformer/wpe/embedding", "wpe.weight")
  add("transformer/ln_f/scale", "ln_f.weight")
  add("transformer/ln_f/bias", "ln_f.bias")
  fused_kernel = lambda e: _derive(e, (e[0][0], 3, e[0][1] // 3),
                                   lambda a: a.reshape(a.shape[0], 3, -1),
                                   "[H, 3H] → [H, 3, H]")
  fused_bias = lambda e: _derive(e, (3, e[0][0] // 3), lambda a: a.reshape(3, -1),
                                 "[3H] → [3, H]")
  for i in range(config.n_layer):
    hf, ours = f"h.{i}", f"transformer/h_{i}"
    for norm in ("ln_1", "ln_2"):
      add(f"{ours}/{norm}/scale", f"{hf}.{norm}.weight")
      add(f"{ours}/{norm}/bias", f"{hf}.{norm}.bias")
    add(f"{ours}/attn/c_attn/kernel", f"{hf}.attn.c_attn.weight", fused_kernel)
    add(f"{ours}/attn/c_attn/bias", f"{hf}.attn.c_attn.bias", fused_bias)
    for module in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
      for kind, leaf in (("weight", "kernel"), ("bias", "bias")):
        add(f"{ours}/{module.replace('.', '/')}/{leaf}", f"{hf}.{module}.{kind}")
  return source, wanted


def _llama_source(tensors: Dict[str, Entry], config: LlamaConfig
                  ) -> Tuple[Source, Dict[str, str]]:
  source, wanted = {}, {}

  def add(ours, hf_name, make=_transposed):
    wanted[ours] = hf_name
    if hf_name in tensors:
      source[ours] = make(tensors[hf_name])

  add("model/embed_tokens/embedding", "model.embed_tokens.weight", _as_is)
  add("model/norm/scale", "model.norm.weight", _as_is)
  if not config.tie_word_embeddings:
    add("lm_head/kernel", "lm_head.weight")
  q_width = config.num_heads * config.head_dim
  kv_width = config.num_kv_heads * config.head_dim
  ffn = config.intermediate_size
  for i in range(config.num_hidden_layers):
    hf, ours = f"model.layers.{i}", f"model/layers_{i}"
    add(f"{ours}/input_layernorm/scale", f"{hf}.input_layernorm.weight", _as_is)
    add(f"{ours}/post_attention_layernorm/scale",
        f"{hf}.post_attention_layernorm.weight", _as_is)
    add(f"{ours}/self_attn/o_proj/kernel", f"{hf}.self_attn.o_proj.weight")
    add(f"{ours}/mlp/down_proj/kernel", f"{hf}.mlp.down_proj.weight")
    fused_qkv = f"{hf}.self_attn.qkv_proj.weight"
    if fused_qkv in tensors:
      tensors[fused_qkv] = _shared(tensors[fused_qkv], 3)
    bounds = {"q": (0, q_width), "k": (q_width, q_width + kv_width),
              "v": (q_width + kv_width, q_width + 2 * kv_width)}
    for short, (start, stop) in bounds.items():
      name = f"{ours}/self_attn/{short}_proj/kernel"
      if fused_qkv in tensors:  # Phi-3
        wanted[name] = f"{fused_qkv} rows {start}:{stop}"
        source[name] = _rows(tensors[fused_qkv], start, stop)
      else:
        add(name, f"{hf}.self_attn.{short}_proj.weight")
      if config.attention_bias:
        add(f"{ours}/self_attn/{short}_proj/bias", f"{hf}.self_attn.{short}_proj.bias",
            _as_is)
    fused_mlp = f"{hf}.mlp.gate_up_proj.weight"
    if fused_mlp in tensors:
      tensors[fused_mlp] = _shared(tensors[fused_mlp], 2)
    for short, (start, stop) in {"gate": (0, ffn), "up": (ffn, 2 * ffn)}.items():
      name = f"{ours}/mlp/{short}_proj/kernel"
      if fused_mlp in tensors:  # Phi-3
        wanted[name] = f"{fused_mlp} rows {start}:{stop}"
        source[name] = _rows(tensors[fused_mlp], start, stop)
      else:
        add(name, f"{hf}.mlp.{short}_proj.weight")
  return source, wanted


def read_source(path, config, hf: Dict[str, Any]
                ) -> Tuple[Source, Callable[[str], str]]:
  """Describes the weights as our parameter paths (no tensor data read).

  Returns:
    (`{path: LazyTensor}`, a function naming the HF tensor a path comes from).
  """
  del hf
  path = epath.Path(path)
  kind, files = huggingface._weight_files(path)  # pylint: disable=protected-access
  tensors = (huggingface._safetensors_tensors(files)  # pylint: disable=protected-access
             if kind == huggingface.SAFETENSORS
             else huggingface._torch_tensors(files))  # pylint: disable=protected-access
  make = _gpt2_source if isinstance(config, GPT2Config) else _llama_source
  source, wanted = make(tensors, config)
  used = {t for w in wanted.values() for t in w.replace(" or ", "|").split("|")}
  used = {u.split(" rows ")[0] for u in used}
  ignorable = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")
  unused = sorted(n for n in tensors if n not in used and not n.endswith(ignorable)
                  and not (n == "lm_head.weight" and getattr(
                      config, "tie_word_embeddings", True)))
  if unused:
    logging.warning("%s: ignoring %d tensor(s) that are not parameters of the %s "
                    "model: %s", path, len(unused), type(config).__name__, unused)

  def describe_missing(name: str) -> str:
    return f"{wanted.get(name, '?')} in {', '.join(f.name for f in files)}"
  return source, describe_missing
