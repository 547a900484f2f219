"""Reads and writes Hugging Face T5 directories (`T5ForConditionalGeneration`).

A directory holds `config.json` and the weights in one of (first found wins):
  model.safetensors | model.safetensors.index.json (sharded) |
  pytorch_model.bin | pytorch_model.bin.index.json (sharded).

safetensors files are read here directly (8-byte header length, a JSON header of
`{name: {dtype, shape, data_offsets}}`, then raw little-endian data): one tensor at a
time through `etils.epath`, so any path epath opens works and bfloat16 files need no
framework. `.bin` files need torch and are read with `torch.load(weights_only=True)`
(plain tensors only, never arbitrary pickled objects), memory-mapped when possible.

Names map to T5X paths as follows (`{s}` encoder/decoder, torch `Linear` weights
are `[out, in]` and are transposed to T5X's `[in, out]` kernels):
  shared.weight (or {s}.embed_tokens.weight)       → token_embedder/embedding
  {s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, N]
                                                   → {s}/relpos_bias/rel_embedding ᵀ
  encoder.block.i.layer.0.SelfAttention.{q,k,v,o}  → encoder/layers_i/attention/
                                                     {query,key,value,out}/kernel ᵀ
  encoder.block.i.layer.0.layer_norm               → …/pre_attention_layer_norm/scale
  encoder.block.i.layer.1.DenseReluDense.{wi_0,wi_1,wo} → …/mlp/…/kernel ᵀ
  encoder.block.i.layer.1.layer_norm               → …/pre_mlp_layer_norm/scale
  decoder.block.i.layer.0 (self), .layer.1 (EncDecAttention), .layer.2 (MLP)
  {s}.final_layer_norm.weight                      → {s}/{s}_norm/scale
  lm_head.weight [vocab, H]                        → decoder/logits_dense/kernel ᵀ

Tied output embeddings. T5 1.1 (`tie_word_embeddings: false`) stores its own
`lm_head.weight` and does not rescale. Original-T5-style configs tie the output
layer to `shared` and scale the decoder output by `d_model**-0.5`; transformers 5
records that scaling as `scale_decoder_outputs` (and always writes
`tie_word_embeddings: true`). Both are supported exactly: when `lm_head.weight` is
absent the kernel is `shared.weight` transposed (as transformers 5 does even for a
config that says untied; a warning is logged then), and a scaled checkpoint has the
scale folded into the kernel (`(x * s) @ W = x @ (s * W)`), so our untied network
computes the same logits (tests/test_hf_parity.py checks all three variants). Only the gated-GELU MLP (`feed_forward_proj:
"gated-gelu"`, T5 1.1 / mT5) is supported.
"""
from __future__ import annotations

import json
import logging
import math
import struct
from typing import Any, Callable, Dict, Tuple

import numpy as np
from etils import epath

from prompt_tuning.checkpoints.errors import CheckpointError, MissingDependencyError
from prompt_tuning.checkpoints.tree import (Index, LazyTensor, Params, ReadCounter,
                                            Source)
from prompt_tuning.models import scan
from prompt_tuning.models.config import T5Config

CONFIG_FILE = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN, TORCH_BIN_INDEX)

_EMBEDDING_NAMES = ("shared.weight", "encoder.embed_tokens.weight",
                    "decoder.embed_tokens.weight")
_ATTENTION = (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))
_MLP = ("wi_0", "wi_1", "wo")
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16",
                       "BF16": "bfloat16"}


def is_huggingface_dir(path: epath.Path) -> bool:
  return (path / CONFIG_FILE).is_file() and any((path / f).is_file()
                                                for f in WEIGHT_FILES)


# ----------------------------------------------------------------- config

def read_hf_config(path: epath.Path) -> Dict[str, Any]:
  try:
    hf = json.loads((path / CONFIG_FILE).read_text())
  except (ValueError, UnicodeDecodeError) as e:  # a damaged download
    raise CheckpointError(f"{path / CONFIG_FILE} is not valid JSON ({e}).") from None
  if not isinstance(hf, dict):
    raise CheckpointError(f"{path / CONFIG_FILE} holds a {type(hf).__name__}, not a "
                          "JSON object.")
  return hf


def config_fields(hf: Dict[str, Any], path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(architecture fields, run-time defaults) of `T5Config` from a HF `config.json`.

  Raises:
    CheckpointError: for a non-T5 model or a non-gated (original T5) MLP.
  """
  model_type = hf.get("model_type", "t5")
  if model_type not in ("t5", "mt5"):
    raise CheckpointError(f"{path}/{CONFIG_FILE} has model_type {model_type!r}; only "
                          "'t5' and 'mt5' (T5.1.1 architecture) are supported.")
  activation = hf.get("feed_forward_proj", "relu")
  if activation != "gated-gelu":
    raise CheckpointError(
        f"{path}/{CONFIG_FILE} has feed_forward_proj={activation!r}; only T5.1.1 "
        "checkpoints (feed_forward_proj='gated-gelu', e.g. google/t5-v1_1-* or "
        "google/t5-*-lm-adapt) are supported, not original T5 ('relu').")
  required = ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_layers")
  absent = [key for key in required if key not in hf]
  if absent:
    raise CheckpointError(f"{path}/{CONFIG_FILE} lacks {absent}; a T5 config.json "
                          f"has all of {list(required)}.")
  num_layers = hf["num_layers"]
  found = {
      "vocab_size": hf["vocab_size"],
      "emb_dim": hf["d_model"],
      "num_heads": hf["num_heads"],
      "head_dim": hf["d_kv"],
      "mlp_dim": hf["d_ff"],
      "num_encoder_layers": num_layers,
      "num_decoder_layers": hf.get("num_decoder_layers") or num_layers,
      "relative_attention_num_buckets": hf.get("relative_attention_num_buckets", 32),
      "relative_attention_max_distance": hf.get("relative_attention_max_distance",
                                                128),
      "layer_norm_epsilon": hf.get("layer_norm_epsilon", 1e-6),
  }
  runtime = {"dropout_rate": hf.get("dropout_rate", 0.1)}
  return found, runtime


def _output_scale(hf: Dict[str, Any]) -> float:
  """The factor HF applies to the decoder output before `lm_head` (1 for T5 1.1)."""
  if "scale_decoder_outputs" in hf:  # transformers >= 5
    scaled = bool(hf["scale_decoder_outputs"])
  else:  # transformers < 5: tied embeddings imply scaling
    scaled = hf.get("tie_word_embeddings", True) is not False
  return hf["d_model"] ** -0.5 if scaled else 1.0


# ----------------------------------------------------------------- safetensors

def _safetensors_header(file: epath.Path) -> Dict[str, Tuple[str, tuple, int, int]]:
  """`{name: (dtype, shape, start, end)}` with absolute byte offsets in `file`.

  Raises:
    CheckpointError: the file is not a well-formed safetensors file (a damaged or
      partial download), naming the file and what is wrong.
  """
  def damaged(problem: str) -> CheckpointError:
    return CheckpointError(f"{file} is not a readable safetensors file: {problem}. "
                           "Download or convert it again.")

  with file.open("rb") as f:
    f.seek(0, 2)  # the file size bounds every length and offset below
    size = f.tell()
    f.seek(0)
    head = f.read(8)
    if len(head) < 8:
      raise damaged(f"{size} bytes, shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", head)
    if length > size - 8:
      raise damaged(f"the header claims {length} bytes but the file has {size}")
    try:
      header = json.loads(f.read(length))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
      raise damaged(f"the header is not JSON ({e})") from None
  if not isinstance(header, dict):
    raise damaged("the header is not a JSON object")
  entries = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype, shape = str(info["dtype"]), tuple(int(d) for d in info["shape"])
      start, end = (int(o) for o in info["data_offsets"])
    except (TypeError, ValueError, KeyError, OverflowError) as e:
      raise damaged(f"tensor {name!r} has a malformed entry {str(info)[:200]} "
                    f"({type(e).__name__}: {e})") from None
    if not 0 <= start <= end <= size - 8 - length or min(shape, default=0) < 0:
      raise damaged(f"tensor {name!r} has offsets {[start, end]} or shape {shape} "
                    f"outside the file's {size - 8 - length} data bytes")
    itemsize = np.dtype(_SAFETENSORS_DTYPES.get(dtype, "float32").replace(
        "bfloat16", "float16")).itemsize
    if dtype in _SAFETENSORS_DTYPES and end - start != math.prod(shape) * itemsize:
      raise damaged(f"tensor {name!r} of shape {shape} ({dtype}) needs "
                    f"{math.prod(shape) * itemsize} bytes, not {end - start}")
    entries[name] = (dtype, shape, 8 + length + start, 8 + length + end)
  return entries


def _safetensors_reader(file: epath.Path, name: str, dtype: str, shape: tuple,
                        start: int, end: int) -> Callable[[], np.ndarray]:
  if dtype not in _SAFETENSORS_DTYPES:
    raise CheckpointError(f"{file}: tensor {name} has dtype {dtype}; expected one of "
                          f"{sorted(_SAFETENSORS_DTYPES)}.")

  def read() -> np.ndarray:
    buffer = bytearray(end - start)  # writable, so no copy is needed below
    with file.open("rb") as f:
      f.seek(start)
      view, done = memoryview(buffer), 0
      while done < len(buffer):
        got = f.readinto(view[done:])
        if not got:
          raise CheckpointError(f"{file}: tensor {name} is truncated.")
        done += got
    return np.frombuffer(buffer, dtype=_numpy_dtype(dtype)).reshape(shape)
  return read


def _numpy_dtype(dtype: str) -> np.dtype:
  np_dtype = _SAFETENSORS_DTYPES[dtype]
  if np_dtype == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    np_dtype = ml_dtypes.bfloat16
  return np.dtype(np_dtype).newbyteorder("<")


def _safetensors_slice_reader(file: epath.Path, name: str, dtype: str, shape: tuple,
                              start: int) -> Callable[[Index], np.ndarray]:
  """Reads `tensor[index]` with offset reads of just the bytes it covers.

  A row-major box is a set of contiguous runs: the dimensions after the last one
  that the box cuts are whole, so each run spans them; one `seek` + `readinto` per
  combination of the outer indices (e.g. `[out, in]` cut on `in`: one run per row).
  """
  np_dtype = _numpy_dtype(dtype)
  itemsize = np_dtype.itemsize
  strides = [itemsize * math.prod(shape[i + 1:]) for i in range(len(shape))]

  def read_slice(index: Index) -> np.ndarray:
    out_shape = tuple(b.stop - b.start for b in index)
    cut = max((i for i, (b, n) in enumerate(zip(index, shape))
               if (b.start, b.stop) != (0, n)), default=-1)
    out = np.empty(out_shape, np_dtype)
    if 0 in out_shape:
      return out
    if cut < 0:  # the whole tensor: one run
      run_bytes, outer = math.prod(shape) * itemsize, [()]
    else:
      run_bytes = out_shape[cut] * strides[cut]
      outer = np.ndindex(*out_shape[:cut])
    flat = out.reshape(-1).view(np.uint8)
    with file.open("rb") as f:
      for position, outer_index in enumerate(outer):
        offset = start + sum((index[d].start + i) * strides[d]
                             for d, i in enumerate(outer_index))
        if cut >= 0:
          offset += index[cut].start * strides[cut]
        f.seek(offset)
        view = memoryview(flat)[position * run_bytes:(position + 1) * run_bytes]
        done = 0
        while done < run_bytes:
          got = f.readinto(view[done:])
          if not got:
            raise CheckpointError(f"{file}: tensor {name} is truncated.")
          done += got
    ReadCounter.add(out.nbytes)
    return out
  return read_slice


def _safetensors_tensors(files) -> Dict[str, tuple]:
  """`{name: (shape, read, where, read_slice)}` over the safetensors files."""
  tensors = {}
  for file in files:
    for name, (dtype, shape, start, end) in _safetensors_header(file).items():
      tensors[name] = (shape, _safetensors_reader(file, name, dtype, shape, start,
                                                  end), f"{file.name}:{name}",
                       _safetensors_slice_reader(file, name, dtype, shape, start))
  return tensors


# ----------------------------------------------------------------- torch .bin

def _torch_tensors(files) -> Dict[str, Tuple[tuple, Callable[[], np.ndarray], str]]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MissingDependencyError(
        f"{files[0].parent} holds only PyTorch weights ({files[0].name}); reading "
        "them needs torch (`pip install torch`, or the project's `test` extra). "
        "Alternatively convert the directory to model.safetensors.") from e
  def load(file):
    """(state dict, whether its tensors are memory-mapped from the file)."""
    try:
      try:
        return torch.load(str(file), map_location="cpu", weights_only=True,
                          mmap=True), True
      except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
        if "mmap" not in str(e) and "zip" not in str(e):
          raise
        with file.open("rb") as f:
          return torch.load(f, map_location="cpu", weights_only=True), False
    except Exception as e:  # pickle.UnpicklingError for non-tensor content
      raise CheckpointError(f"{file} could not be read with torch.load(weights_only="
                            f"True), which accepts plain tensors only: {e}") from e

  tensors = {}
  for file in files:
    state, mapped = load(file)
    if not isinstance(state, dict):
      raise CheckpointError(f"{file} holds a {type(state).__name__}, not a state "
                            "dict of tensors.")

    def reader(name, state=state):
      def read():
        tensor = state.pop(name)  # drop the state dict's reference as we go
        if tensor.dtype != torch.float32:
          tensor = tensor.float()
        return tensor.numpy()
      return read

    def slice_reader(name, state=state):
      def read_slice(index):
        # A memory-mapped tensor: slicing touches only the file pages of the box.
        part = state[name][tuple(index)]
        out = np.array(part.float().numpy() if part.dtype != torch.float32
                       else part.numpy(), copy=True)
        ReadCounter.add(out.nbytes)
        return out
      return read_slice

    for name, tensor in state.items():
      tensors[name] = (tuple(tensor.shape), reader(name), f"{file.name}:{name}",
                       slice_reader(name) if mapped else None)
  return tensors


# ----------------------------------------------------------------- mapping

def _weight_files(path: epath.Path):
  for index, single in ((SAFETENSORS_INDEX, SAFETENSORS), (TORCH_BIN_INDEX, TORCH_BIN)):
    if (path / single).is_file():
      return single, [path / single]
    if (path / index).is_file():
      weight_map = json.loads((path / index).read_text())["weight_map"]
      return single, [path / f for f in sorted(set(weight_map.values()))]
  raise CheckpointError(f"{path} has no weights: expected one of {list(WEIGHT_FILES)}.")


def name_map(config: T5Config) -> Dict[str, Tuple[str, bool]]:
  """`{T5X path: (HF name, transpose)}` for every parameter but the embedding and
  `decoder/logits_dense/kernel` (which have fallbacks, see `read_source`)."""
  names: Dict[str, Tuple[str, bool]] = {}
  for stack in ("encoder", "decoder"):
    names[f"{stack}/relpos_bias/rel_embedding"] = (
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", True)
    names[f"{stack}/{stack}_norm/scale"] = (f"{stack}.final_layer_norm.weight", False)
  for i in range(config.num_encoder_layers):
    hf, ours = f"encoder.block.{i}.layer", f"encoder/layers_{i}"
    for short, long in _ATTENTION:
      names[f"{ours}/attention/{long}/kernel"] = (f"{hf}.0.SelfAttention.{short}.weight",
                                                  True)
    names[f"{ours}/pre_attention_layer_norm/scale"] = (f"{hf}.0.layer_norm.weight",
                                                       False)
    for w in _MLP:
      names[f"{ours}/mlp/{w}/kernel"] = (f"{hf}.1.DenseReluDense.{w}.weight", True)
    names[f"{ours}/pre_mlp_layer_norm/scale"] = (f"{hf}.1.layer_norm.weight", False)
  for i in range(config.num_decoder_layers):
    hf, ours = f"decoder.block.{i}.layer", f"decoder/layers_{i}"
    for short, long in _ATTENTION:
      names[f"{ours}/self_attention/{long}/kernel"] = (
          f"{hf}.0.SelfAttention.{short}.weight", True)
      names[f"{ours}/encoder_decoder_attention/{long}/kernel"] = (
          f"{hf}.1.EncDecAttention.{short}.weight", True)
    names[f"{ours}/pre_self_attention_layer_norm/scale"] = (f"{hf}.0.layer_norm.weight",
                                                            False)
    names[f"{ours}/pre_cross_attention_layer_norm/scale"] = (
        f"{hf}.1.layer_norm.weight", False)
    for w in _MLP:
      names[f"{ours}/mlp/{w}/kernel"] = (f"{hf}.2.DenseReluDense.{w}.weight", True)
    names[f"{ours}/pre_mlp_layer_norm/scale"] = (f"{hf}.2.layer_norm.weight", False)
  return names


def _lazy(entry, transpose: bool, scale: float = 1.0) -> LazyTensor:
  shape, read, where, read_stored_slice = entry
  if transpose:
    shape = tuple(reversed(shape))

  def finish(array):
    if transpose:
      array = array.T
    if scale != 1.0:
      array = array.astype(np.float32) * np.float32(scale)
    return array

  def read_slice(index: Index) -> np.ndarray:  # index is in T5X (transposed) order
    return finish(read_stored_slice(tuple(reversed(index)) if transpose else index))

  return LazyTensor(shape, lambda: finish(read()),
                    where + (" (transposed)" if transpose else "")
                    + (f" (× {scale:.6g})" if scale != 1.0 else ""),
                    read_slice=read_slice if read_stored_slice else None)


def read_source(path, config: T5Config, hf: Dict[str, Any]
                ) -> Tuple[Source, Callable[[str], str]]:
  """Describes the HF weights as T5X paths (no tensor data read).

  Returns:
    (`{T5X path: LazyTensor}`, a function naming the HF tensor(s) a T5X path
    would come from, for error messages).
  """
  path = epath.Path(path)
  kind, files = _weight_files(path)
  tensors = (_safetensors_tensors(files) if kind == SAFETENSORS
             else _torch_tensors(files))
  names = name_map(config)
  source: Source = {ours: _lazy(tensors[hf_name], transpose)
                    for ours, (hf_name, transpose) in names.items()
                    if hf_name in tensors}
  embedding = next((n for n in _EMBEDDING_NAMES if n in tensors), None)
  if embedding:
    source["token_embedder/embedding"] = _lazy(tensors[embedding], False)
  head = "lm_head.weight" if "lm_head.weight" in tensors else embedding
  if head and head != "lm_head.weight" and hf.get("tie_word_embeddings") is False:
    # transformers 5 ties a missing lm_head to `shared` whatever the config says;
    # follow it, but say so (transformers 4 would have initialized it randomly).
    logging.warning("%s: config says tie_word_embeddings=false but there is no "
                    "lm_head.weight; using %s (tied), as transformers 5 does.",
                    path, head)
  if head:
    source["decoder/logits_dense/kernel"] = _lazy(tensors[head], True,
                                                  _output_scale(hf))
  used = {hf_name for hf_name, _ in names.values()} | set(_EMBEDDING_NAMES) | {
      "lm_head.weight"}
  unused = sorted(set(tensors) - used)
  if unused:
    logging.warning("%s: ignoring %d tensor(s) that are not parameters of the T5.1.1 "
                    "model: %s", path, len(unused), unused)
  hf_names = {ours: hf_name for ours, (hf_name, _) in names.items()}
  hf_names["token_embedder/embedding"] = " or ".join(_EMBEDDING_NAMES)
  hf_names["decoder/logits_dense/kernel"] = "lm_head.weight or shared.weight (tied)"

  def describe_missing(name: str) -> str:
    return f"{hf_names.get(name, '?')} in {', '.join(f.name for f in files)}"
  return source, describe_missing


# ----------------------------------------------------------------- writing

def to_hf_config(config: T5Config) -> Dict[str, Any]:
  """A transformers `T5Config` dict for an untied T5.1.1 model of `config`."""
  return {
      "architectures": ["T5ForConditionalGeneration"],
      "model_type": "t5",
      "vocab_size": config.vocab_size,
      "d_model": config.emb_dim,
      "d_kv": config.head_dim,
      "d_ff": config.mlp_dim,
      "num_heads": config.num_heads,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "feed_forward_proj": "gated-gelu",
      "tie_word_embeddings": False,
      "scale_decoder_outputs": False,
      "is_encoder_decoder": True,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
      "dtype": "float32",
  }


def save_huggingface(path, params: Params, config: T5Config) -> epath.Path:
  """Writes `config.json` + `model.safetensors` loadable by
  `transformers.T5ForConditionalGeneration.from_pretrained` (untied, T5.1.1).

  Holds one transposed copy of the weights while writing (safetensors writes from
  an in-memory dict). Returns the directory.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  path = epath.Path(path)
  if "://" in str(path):
    raise CheckpointError(f"save_huggingface writes local directories only, not "
                          f"{path}.")
  path.mkdir(parents=True, exist_ok=True)
  flat = scan.unstack({"/".join(k): v for k, v in _flatten_params(params).items()})
  tensors = {}
  for ours, (hf_name, transpose) in name_map(config).items():
    array = np.asarray(flat[ours], dtype=np.float32)
    tensors[hf_name] = np.ascontiguousarray(array.T if transpose else array)
  tensors["shared.weight"] = np.ascontiguousarray(
      np.asarray(flat["token_embedder/embedding"], np.float32))
  tensors["lm_head.weight"] = np.ascontiguousarray(
      np.asarray(flat["decoder/logits_dense/kernel"], np.float32).T)
  save_file(tensors, str(path / SAFETENSORS), metadata={"format": "pt"})
  (path / CONFIG_FILE).write_text(json.dumps(to_hf_config(config), indent=2))
  return path


def _flatten_params(tree, prefix=()) -> Dict[tuple, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten_params(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat
