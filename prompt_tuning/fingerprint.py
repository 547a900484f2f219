"""Which frozen model a prompt was trained on: a fingerprint, stored with every export.

A soft prompt is only meaningful on the frozen model it was trained with: served on
another checkpoint (or with another vocabulary, or placed differently) it runs
without error and answers badly. Every export therefore carries a small JSON record:

  {"fingerprint": "3f0c…",                 first 16 hex digits of a sha256 over the
                                          three parts below
   "model": "gs://…/checkpoint_1100000",  a human name (the checkpoint path)
   "embedding": {"sha256": …, "shape": [V, H]},   the frozen token embedding table
   "vocabulary": {"sha256": …, "size": V'},       the sentencepiece model (or None)
   "placement": "prompt/prefix",          method kind / where the prompt goes
   "version": 1}

Where it is stored (one rule, `sidecar_path`): next to `name.npy` as
`name.model.json`; in a PEFT adapter, in the safetensors header metadata under
`model_fingerprint` (PEFT ignores it; an unknown key in adapter_config.json would
make PEFT warn about its own version). A training run keeps its record once in
`MODEL_DIR/model_fingerprint.json`; the run directory's export writers copy it
next to every `.npy` they write.

`check` compares a stored record with the model being served part by part and
raises `PromptModelMismatch` (one line naming both models and the differing parts)
unless `allow=True`; a prompt without a record (e.g. the released prompts) loads
with a warning.

This module imports nothing of ours, so every layer (run directory, prompt files,
entry points) can use it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

VERSION = 1
EMBEDDING_PATH = "token_embedder/embedding"
RUN_FILE = "model_fingerprint.json"  # in MODEL_DIR
SIDECAR_SUFFIX = ".model.json"
SAFETENSORS_KEY = "model_fingerprint"
OVERRIDE = "--gin.ALLOW_PROMPT_MODEL_MISMATCH=True"
PARTS = ("embedding", "vocabulary", "placement")

Record = Dict[str, Any]
PathLike = Union[str, os.PathLike]


class PromptModelMismatch(ValueError):
  """A prompt is being used on a different frozen model than it was trained on."""


# ---------------------------------------------------------------- computing


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def embedding_digest(embedding) -> Dict[str, Any]:
  """sha256 of the `[V, H]` table as little-endian float32 bytes (dtype-independent
  for float32/bfloat16 tables that hold the same values)."""
  table = np.ascontiguousarray(np.asarray(embedding, dtype=np.float32)).astype("<f4")
  if table.ndim != 2:
    raise ValueError(f"The token embedding table is [V, H]; got shape {list(table.shape)}.")
  return {"sha256": _sha256(table.tobytes()), "shape": list(table.shape)}


def vocabulary_digest(vocabulary: Any) -> Optional[Dict[str, Any]]:
  """sha256 of a vocabulary: the serialized sentencepiece model when there is one
  (seqio's `sp_model`), else its type and size; None for no vocabulary."""
  if vocabulary is None:
    return None
  size = getattr(vocabulary, "vocab_size", None)
  data = getattr(vocabulary, "sp_model", None)
  if isinstance(data, (bytes, bytearray)):
    return {"sha256": _sha256(bytes(data)), "size": size}
  if isinstance(vocabulary, (bytes, bytearray)):
    return {"sha256": _sha256(bytes(vocabulary)), "size": size}
  described = f"{type(vocabulary).__module__}.{type(vocabulary).__qualname__}:{size}"
  return {"sha256": _sha256(described.encode()), "size": size}


def placement(method: Any) -> str:
  """Method kind and prompt placement, e.g. 'prompt/prefix', 'prefix', 'lopa/suffix'.

  A prompt bank serves plain prompts, and a multi-task prompt run exports one
  (its composed rows), so both count as 'prompt'."""
  name = getattr(method, "name", str(method))
  kind = "prompt" if name in ("bank", "multitask_prompt") else name
  combine = getattr(getattr(method, "prompt", None), "combine", None)
  return f"{kind}/{combine}" if combine else kind


def of_model(embedding, vocabulary: Any = None, placement: Optional[str] = None,  # pylint: disable=redefined-outer-name
             name: Optional[str] = None) -> Record:
  """The fingerprint record of a frozen model (embedding `[V, H]`), its vocabulary
  and where the method's parameters go."""
  record = {"embedding": embedding_digest(embedding),
            "vocabulary": vocabulary_digest(vocabulary),
            "placement": placement,
            "model": str(name) if name else "unnamed model",
            "version": VERSION}
  record["fingerprint"] = _combined(record)
  return record


def of_params(params: Mapping[str, Any], vocabulary: Any = None,
              placement: Optional[str] = None, name: Optional[str] = None,  # pylint: disable=redefined-outer-name
              embedding_path: str = EMBEDDING_PATH) -> Record:
  """`of_model` reading the embedding from a nested parameter tree
  (`embedding_path`: T5's by default; `models.families.embedding_path(config)`)."""
  node: Any = params
  for key in embedding_path.split("/"):
    if not isinstance(node, Mapping) or key not in node:
      raise KeyError(f"No {embedding_path} in the parameters; cannot fingerprint "
                     "the frozen model.")
    node = node[key]
  return of_model(node, vocabulary, placement, name)


def _combined(record: Mapping[str, Any]) -> str:
  parts = {p: record.get(p) for p in PARTS}
  return _sha256(json.dumps(parts, sort_keys=True).encode())[:16]


def _short(record: Mapping[str, Any]) -> str:
  return f"{record.get('model', 'unnamed model')} [{record.get('fingerprint', '?')}]"


# ---------------------------------------------------------------- files


def sidecar_path(npy_path: PathLike) -> pathlib.Path:
  """`dir/name.npy` → `dir/name.model.json`."""
  path = pathlib.Path(npy_path)
  stem = path.name[:-len(".npy")] if path.name.endswith(".npy") else path.name
  return path.with_name(stem + SIDECAR_SUFFIX)


def write_sidecar(npy_path: PathLike, record: Mapping[str, Any]) -> pathlib.Path:
  path = sidecar_path(npy_path)
  path.write_text(json.dumps(dict(record), indent=2, sort_keys=True))
  return path


def read_sidecar(npy_path: PathLike) -> Optional[Record]:
  """The record stored next to a `.npy` file, or None."""
  path = sidecar_path(npy_path)
  if not path.is_file():
    return None
  try:
    record = json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path}: not a readable model fingerprint ({e}); delete it "
                     "to load the prompt without one.") from e
  return record if isinstance(record, dict) else None


def write_run(model_dir: PathLike, record: Mapping[str, Any]) -> pathlib.Path:
  """Keeps the run's record in `MODEL_DIR/model_fingerprint.json` (atomically)."""
  path = pathlib.Path(model_dir) / RUN_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(RUN_FILE + ".tmp")
  tmp.write_text(json.dumps(dict(record), indent=2, sort_keys=True))
  os.replace(tmp, path)
  return path


def read_run(model_dir: PathLike) -> Optional[Record]:
  path = pathlib.Path(model_dir) / RUN_FILE
  return json.loads(path.read_text()) if path.is_file() else None


def read_any(source: PathLike) -> Optional[Record]:
  """The record of a prompt source: a `.npy` file (its sidecar), a directory of
  `.npy` files (the first sidecar found) or a PEFT adapter directory."""
  path = pathlib.Path(source)
  if path.is_file():
    return read_sidecar(path)
  if path.is_dir():
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
      return read_safetensors(weights)
    for npy in sorted(path.glob("*.npy")):
      record = read_sidecar(npy)
      if record is not None:
        return record
  return None


def read_safetensors(path: PathLike) -> Optional[Record]:
  """The record in a safetensors file's header metadata, or None."""
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    if size <= 0 or size > 100_000_000:
      return None
    header = json.loads(f.read(size))
  value = (header.get("__metadata__") or {}).get(SAFETENSORS_KEY)
  return json.loads(value) if value else None


# ---------------------------------------------------------------- checking


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list:
  """The parts that differ; a part unknown on either side is not compared."""
  return [p for p in PARTS
          if stored.get(p) is not None and current.get(p) is not None
          and stored.get(p) != current.get(p)]


def check(stored: Optional[Mapping[str, Any]], current: Mapping[str, Any], what: str,
          allow: bool = False) -> bool:
  """Refuses a prompt trained on another frozen model.

  Args:
    stored: the prompt's record (None: it has none, e.g. a released prompt).
    current: `of_model(...)` of the model it is about to be used with.
    what: names the prompt in messages (its path).
    allow: log instead of raising on a mismatch.

  Returns:
    True when the record matches, False when it is missing or allowed to differ.

  Raises:
    PromptModelMismatch: one line naming both models, the differing parts and the
      override flag.
  """
  if stored is None:
    logging.warning("%s has no model fingerprint (released or older prompt): "
                    "make sure it was trained on %s.", what, _short(current))
    return False
  diff = differences(stored, current)
  if not diff:
    return True
  message = (f"{what} was trained on frozen model {_short(stored)} but is used "
             f"with {_short(current)}; they differ in {', '.join(diff)}. Use the "
             f"model it was trained on, or pass {OVERRIDE} to use it anyway.")
  if allow:
    logging.warning("%s (allowed by ALLOW_PROMPT_MODEL_MISMATCH)", message)
    return False
  raise PromptModelMismatch(message)
