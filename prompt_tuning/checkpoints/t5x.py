"""Reads T5X checkpoints (e.g. `gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/
checkpoint_1100000`) into the T5X parameter tree.

Layout of `checkpoint_<step>/`:
  checkpoint            flax msgpack `{version: 3, optimizer: {state, target}}`.
                        Small arrays are inline (msgpack ext type 1: shape, dtype
                        name, raw bytes); large ones are tensorstore specs
                        `{driver: zarr, kvstore: {driver: gfile|file, path:
                        'target.encoder.layers_0.mlp.wi_0.kernel'}, metadata: {...}}`
                        with the path relative to the checkpoint directory.
  target.<param path>/  zarr v2 arrays (gzip, `<f4`), one per large parameter.
  state.param_states.*  optimizer slots: never opened here.

The msgpack file is read as a stream: `optimizer/state` is skipped by the unpacker
without building its objects, and only `optimizer/target` is decoded. Large arrays
are then read one at a time by tensorstore (its `file` driver locally, `gcs` for
`gs://` directories, with the user's default credentials). Files are opened through
`etils.epath`, so `gs://` paths work wherever epath has a GCS backend.

A T5X checkpoint stores no config. Sizes are inferred from tensor shapes (see
`infer_config_fields`); `relative_attention_max_distance`, `layer_norm_epsilon`,
`dropout_rate` and `dtype` must come from the caller's config (the model gin's
`MODEL_CONFIG`): `checkpoints.load` refuses a T5X checkpoint without one, since a
model trained with another max distance would otherwise load silently wrong.

Damaged data: zarr arrays are opened with `fill_missing_data_reads=False`, so a
chunk file that is missing (tensorstore's default reads it as zeros) or cannot be
decoded raises `DamagedChunkError` naming the tensor, the chunk key and its file.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple

import msgpack
import numpy as np
from etils import epath

from prompt_tuning.checkpoints.errors import CheckpointError, CheckpointNotFoundError
from prompt_tuning.checkpoints.tree import LazyTensor, ReadCounter, Source, chunk_bytes

MSGPACK_FILE = "checkpoint"
_STEP_DIR = re.compile(r"checkpoint_(\d+)")
_LAYER = re.compile(r"(encoder|decoder)/layers_(\d+)/")

# flax.serialization's msgpack extension codes.
_EXT_NDARRAY, _EXT_COMPLEX, _EXT_SCALAR = 1, 2, 3
_CHUNKED = "__msgpack_chunked_array__"


# ----------------------------------------------------------------- directories

def is_checkpoint_dir(path: epath.Path) -> bool:
  return (path / MSGPACK_FILE).is_file()


def resolve_checkpoint_dir(path) -> epath.Path:
  """The `checkpoint_<step>` directory to read.

  Accepts the step directory itself, the `checkpoint` file inside it, or a model
  directory holding `checkpoint_<step>/` subdirectories (the highest step that has
  a `checkpoint` file wins; T5X's temporary `checkpoint_<step>.tmp-*` are ignored).
  """
  path = epath.Path(path)
  if not path.exists():
    raise CheckpointNotFoundError(f"No T5X checkpoint at {path}: the path does not "
                                  "exist.")
  if path.is_file() and path.name == MSGPACK_FILE:
    return path.parent
  if is_checkpoint_dir(path):
    return path
  steps = []
  if path.is_dir():
    for child in path.iterdir():
      match = _STEP_DIR.fullmatch(child.name)
      if match and is_checkpoint_dir(child):
        steps.append((int(match.group(1)), child))
  if not steps:
    raise CheckpointNotFoundError(
        f"No T5X checkpoint in {path}: expected a `{MSGPACK_FILE}` msgpack file or "
        f"`checkpoint_<step>/{MSGPACK_FILE}` subdirectories.")
  return max(steps, key=lambda s: s[0])[1]


def latest_step_dir(path) -> Optional[epath.Path]:
  """Like `resolve_checkpoint_dir` but returns None when nothing matches."""
  try:
    return resolve_checkpoint_dir(path)
  except CheckpointNotFoundError:
    return None


# ----------------------------------------------------------------- msgpack

def _decode_ndarray(data: bytes) -> np.ndarray:
  shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
  dtype = np.dtype(_dtype(dtype_name.decode() if isinstance(dtype_name, bytes)
                          else dtype_name))
  return np.frombuffer(buffer, dtype=dtype).reshape(shape).copy()


def _dtype(name: str):
  if name == "bfloat16":
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    return ml_dtypes.bfloat16
  return np.dtype(name)


def _ext_hook(code: int, data: bytes):
  if code == _EXT_NDARRAY:
    return _decode_ndarray(data)
  if code == _EXT_COMPLEX:
    real, imag = msgpack.unpackb(data)
    return complex(real, imag)
  if code == _EXT_SCALAR:
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    del shape
    return np.frombuffer(buffer, dtype=_dtype(dtype_name.decode()))[0]
  return msgpack.ExtType(code, data)


def _unpacker(stream) -> msgpack.Unpacker:
  return msgpack.Unpacker(stream, raw=False, ext_hook=_ext_hook, max_buffer_size=0,
                          strict_map_key=False)


def read_target(checkpoint_dir: epath.Path) -> Dict[str, Any]:
  """Decodes `optimizer/target` of the msgpack file; everything else is skipped.

  Returns the nested target dict whose leaves are numpy arrays (inline tensors) or
  tensorstore spec dicts. `optimizer/state` is stepped over with
  `Unpacker.skip()`, which never builds its arrays.
  """
  file = checkpoint_dir / MSGPACK_FILE
  target = None
  with file.open("rb") as stream:
    unpacker = _unpacker(stream)
    try:
      for _ in range(unpacker.read_map_header()):
        if unpacker.unpack() != "optimizer":
          unpacker.skip()
          continue
        for _ in range(unpacker.read_map_header()):
          if unpacker.unpack() == "target":
            target = unpacker.unpack()
          else:
            unpacker.skip()  # optimizer state: not materialized
    except (msgpack.UnpackException, ValueError) as e:
      raise CheckpointError(f"{file} is not a T5X msgpack checkpoint "
                            f"({type(e).__name__}: {e}).") from e
  if not isinstance(target, dict):
    raise CheckpointError(f"{file} has no `optimizer/target` entry: not a T5X "
                          "(version 3) checkpoint.")
  return target


def _unchunk(node: Dict[str, Any]) -> np.ndarray:
  """Reassembles flax's chunked encoding of arrays too large for one msgpack item."""
  as_tuple = lambda d: tuple(d[str(i)] for i in range(len(d)))
  return np.concatenate(as_tuple(node["chunks"])).reshape(as_tuple(node["shape"]))


def _is_ts_spec(node: Any) -> bool:
  return isinstance(node, dict) and "driver" in node and "kvstore" in node


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and value.get(_CHUNKED):
      flat[name] = _unchunk(value)
    elif isinstance(value, dict) and not _is_ts_spec(value):
      flat.update(_flatten(value, name + "/"))
    else:
      flat[name] = value
  return flat


# ----------------------------------------------------------------- tensorstore

def absolute_spec(checkpoint_dir: str, spec: Dict[str, Any]) -> Dict[str, Any]:
  """A tensorstore spec whose kvstore points at the array under `checkpoint_dir`.

  T5X records `kvstore: {driver: 'gfile' | 'file', path: 'target.<name>'}` relative
  to the checkpoint directory (older tensorstore versions put `path` at the top).
  Local directories get the `file` driver; `gs://bucket/dir` gets
  `{driver: 'gcs', bucket: 'bucket', path: 'dir/target.<name>'}`. The stored
  `metadata` is dropped so that tensorstore reads `.zarray` itself.
  """
  spec = {k: v for k, v in spec.items() if k != "metadata"}
  kvstore = dict(spec.pop("kvstore"))
  relative = kvstore.get("path", "")
  if "path" in spec:  # tensorstore < 0.1.14 layout
    relative = f"{relative.rstrip('/')}/{spec.pop('path')}" if relative else spec.pop(
        "path")
  base = str(checkpoint_dir).rstrip("/")
  if relative.startswith("gs://") or relative.startswith("/"):
    full = relative  # already absolute
  else:
    full = f"{base}/{relative}"
  match = re.fullmatch(r"gs://([^/]+)/(.*)", full, re.DOTALL)
  if match:
    spec["kvstore"] = {"driver": "gcs", "bucket": match.group(1),
                       "path": match.group(2)}
  elif "://" in full:
    raise CheckpointError(
        f"Cannot read tensorstore array {relative!r} under {base}: only local "
        "paths and gs:// are supported for T5X checkpoints.")
  else:
    spec["kvstore"] = {"driver": "file", "path": full}
  return spec


def _open_spec(spec: Dict[str, Any]):
  """Opens a zarr array; a chunk missing from the store is an error on read.

  tensorstore's default (`fill_missing_data_reads`) returns the fill value (zeros)
  for a chunk file that does not exist, which makes a partial download look like a
  valid checkpoint; here a missing chunk raises instead (`_read_spec` names it).
  """
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  try:
    return ts.open({**spec, "fill_missing_data_reads": False}, open=True,
                   read=True).result()
  except Exception as e:  # tensorstore raises ValueError / OSError variants
    raise CheckpointError(f"Could not open tensorstore array {spec['kvstore']}: "
                          f"{e}") from e


class DamagedChunkError(CheckpointError):
  """A zarr chunk of a T5X tensor is missing or cannot be decoded.

  Attributes:
    tensor: the parameter path (e.g. `decoder/logits_dense/kernel`).
    chunk: the chunk's key in the zarr array (e.g. `0.3`), or None if unknown.
    file: the chunk's file (or the array's location when tensorstore gave none).
  """

  def __init__(self, tensor: str, chunk: Optional[str], file: str, problem: str,
               detail: str):
    self.tensor, self.chunk, self.file = tensor, chunk, file
    where = f"chunk {chunk} ({file})" if chunk else file
    super().__init__(
        f"T5X checkpoint tensor {tensor}: {where} is {problem} ({detail}). The "
        "checkpoint is incomplete or damaged (e.g. an interrupted download): copy "
        "this tensor's directory again.")


_TS_CHUNK = re.compile(r"chunk \{([\d, ]+)\}")
_TS_FILE = re.compile(r'file "([^"]+)"')


def _damaged(tensor: str, spec: Dict[str, Any], error: Exception) -> DamagedChunkError:
  """Turns tensorstore's read error into one naming the tensor, chunk and file."""
  text = str(error)
  file_match = _TS_FILE.search(text)
  chunk_match = _TS_CHUNK.search(text)
  kvstore = spec.get("kvstore", {})
  array_dir = kvstore.get("path", "")
  if kvstore.get("driver") == "gcs":
    array_dir = f"gs://{kvstore.get('bucket')}/{array_dir}"
  file = file_match.group(1) if file_match else array_dir
  if chunk_match:  # zarr v2 chunk keys join grid indices with '.'
    chunk = ".".join(i.strip() for i in chunk_match.group(1).split(","))
  elif file_match:
    chunk = file.rstrip("/").rsplit("/", 1)[-1]
  else:
    chunk = None
  if chunk and not file_match:
    file = f"{array_dir.rstrip('/')}/{chunk}"
  missing = "NOT_FOUND" in text or "is missing" in text
  problem = "missing" if missing else "corrupt (it cannot be decoded)"
  return DamagedChunkError(tensor, chunk, file, problem, text.splitlines()[0])


def _read_spec(spec: Dict[str, Any], declared_dtype: Optional[str],
               tensor: str = "", index: Any = ()) -> np.ndarray:
  """Reads `array[index]` (the whole tensor by default) of one zarr array."""
  store = _open_spec(spec)
  try:
    if index == ():
      array = store.read().result()
    else:  # only the chunks overlapping `index` are fetched and decoded
      array = store[index].read().result()
      ReadCounter.add(chunk_bytes(store, index))
  except Exception as e:  # ValueError from tensorstore: missing / undecodable chunk
    raise _damaged(tensor or str(spec["kvstore"].get("path")), spec, e) from e
  if declared_dtype in ("<u2", "uint16") or array.dtype == np.uint16:
    # Old T5X stored bfloat16 as uint16 bit patterns.
    import ml_dtypes  # pylint: disable=g-import-not-at-top
    array = array.view(ml_dtypes.bfloat16)
  return array


def _spec_shape(spec: Dict[str, Any], absolute: Dict[str, Any]) -> Tuple[int, ...]:
  shape = spec.get("metadata", {}).get("shape")
  if shape is None:  # not recorded: open the array's metadata (no data read)
    shape = _open_spec(absolute).shape
  return tuple(int(d) for d in shape)


# ----------------------------------------------------------------- public

def read_source(path) -> Tuple[epath.Path, Source]:
  """Describes a T5X checkpoint without reading its large arrays.

  Returns:
    (the `checkpoint_<step>` directory, `{param path: LazyTensor}`).
  """
  checkpoint_dir = resolve_checkpoint_dir(path)
  source: Source = {}
  for name, leaf in _flatten(read_target(checkpoint_dir)).items():
    if _is_ts_spec(leaf):
      spec = absolute_spec(str(checkpoint_dir), leaf)
      declared = leaf.get("metadata", {}).get("dtype") or leaf.get("dtype")
      source[name] = LazyTensor(
          _spec_shape(leaf, spec),
          lambda spec=spec, declared=declared, name=name: _read_spec(
              spec, declared, name),
          f"{checkpoint_dir}/{leaf['kvstore'].get('path', name)}",
          read_slice=lambda index, spec=spec, declared=declared, name=name: (
              _read_spec(spec, declared, name, index)))
    elif isinstance(leaf, np.ndarray):
      source[name] = LazyTensor(leaf.shape, lambda leaf=leaf: leaf,
                                f"{checkpoint_dir}/{MSGPACK_FILE}:{name}")
  return checkpoint_dir, source


def infer_config_fields(source: Source) -> Dict[str, int]:
  """T5Config fields implied by tensor shapes (only those whose tensors exist).

  vocab_size, emb_dim ← token_embedder/embedding [vocab, H];
  num_heads, relative_attention_num_buckets ← encoder/relpos_bias/rel_embedding
  [N, buckets]; head_dim ← query kernel [H, N*D] / N; mlp_dim ← wi_0 [H, F];
  layer counts ← the `layers_<i>` present.
  """
  shape = lambda name: tuple(source[name].shape) if name in source else None
  fields: Dict[str, int] = {}
  embedding = shape("token_embedder/embedding")
  if embedding and len(embedding) == 2:
    fields["vocab_size"], fields["emb_dim"] = embedding
  relpos = shape("encoder/relpos_bias/rel_embedding")
  if relpos and len(relpos) == 2:
    fields["num_heads"], fields["relative_attention_num_buckets"] = relpos
  query = shape("encoder/layers_0/attention/query/kernel")
  if query and "num_heads" in fields and query[1] % fields["num_heads"] == 0:
    fields["head_dim"] = query[1] // fields["num_heads"]
  if "encoder/layers_0/mlp/wi/kernel" in source:
    raise CheckpointError(
        "This T5X checkpoint has a non-gated `mlp/wi` (original T5, ReLU); only "
        "T5.1.1 checkpoints (gated GELU, `mlp/wi_0` and `mlp/wi_1`) are supported.")
  mlp = shape("encoder/layers_0/mlp/wi_0/kernel")
  if mlp and len(mlp) == 2:
    fields["mlp_dim"] = mlp[1]
  for stack in ("encoder", "decoder"):
    layers = {int(m.group(2)) for name in source
              for m in [_LAYER.match(name)] if m and m.group(1) == stack}
    if layers:
      fields[f"num_{stack}_layers"] = max(layers) + 1
  return fields
