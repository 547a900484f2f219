"""Every way a `[P, H]` prompt arrives or leaves: arrays, `.npy`, exports, PEFT, MODEL_DIRs.

  load_prompt(source, shape=None, checkpoint='best')
      a `[P, H]` float32 prompt from: an array; a `.npy` file (its header is checked
      before numpy allocates anything; pickles are refused); a directory of exports
      (`encoder.prompt.prompt.npy` in it, or in its newest `checkpoint_<step>/`); a
      Hugging Face PEFT prompt-tuning adapter directory; or a training MODEL_DIR (its
      `checkpoint` export: 'best', 'latest' or a step, else its orbax state)
  prompt_path(source, checkpoint)         the `.npy` file a file-based source names
  from_file(path)                         a prompt initializer reading `path` (gin:
                                          `prompt_init.from_file`)
  save_prompt(path, prompt)               one `[P, H]` prompt as `.npy`
  save_numpy(directory, method, params)   every `Method.exported` array as
                                          `<name>.npy` (e.g. encoder.prompt.prompt.npy)
  save_peft(directory, prompt, config)    a PEFT prompt-tuning adapter directory:
                                          adapter_config.json + adapter_model.safetensors
                                          holding `prompt_embeddings` `[P, H]`
  load_peft(directory)                    → the `[P, H]` float32 prompt of an adapter

Every writer takes an optional `model` record (`prompt_tuning.fingerprint`) of the
frozen model the prompt was trained on: `.npy` files get a `<name>.model.json`
sidecar, PEFT adapters keep it in the safetensors header. `check_model(source,
current)` refuses a prompt trained on another model (warns when it has no record).

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
import math
import os
import pathlib
import re
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import jax.numpy as jnp
import numpy as np

from prompt_tuning import fingerprint
from prompt_tuning.errors import UserError
from prompt_tuning.methods.base import Method
from prompt_tuning.methods.initializers import Initializer
from prompt_tuning.models.config import T5Config
from prompt_tuning.models import families
from prompt_tuning.params import Params
from prompt_tuning.run_dir import layout, train_state

PathLike = Union[str, os.PathLike]
Shape = Optional[Tuple[Optional[int], Optional[int]]]  # (P, H); None: any
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_WEIGHTS_BIN = "adapter_model.bin"
PEFT_KEY = "prompt_embeddings"
PROMPT_EXPORT = "encoder.prompt.prompt"  # what prompt tuning (and LoPA) export
PROMPT_FILE = f"{PROMPT_EXPORT}.npy"
PROMPT_PATH = "encoder/prompt/prompt"  # its parameter path
PROMPT_METHODS = ("prompt", "lopa")  # methods whose runs hold an encoder prompt


class PromptFileError(UserError, ValueError):
  """A prompt source cannot be used: not a `.npy` array, or the wrong shape.

  The message names the file, the expected shape and what was found.
  """


class PromptNotFoundError(PromptFileError, FileNotFoundError):
  """A prompt source does not exist or holds no prompt."""


class PeftFormatError(PromptFileError):
  """A directory is not a usable PEFT prompt-tuning adapter; says what is wrong."""


# ---------------------------------------------------------------- reading


def load_prompt(source: Any, shape: Shape = None,
                checkpoint: layout.Checkpoint = "best") -> np.ndarray:
  """A `[P, H]` float32 prompt from any source (see the module docstring).

  Args:
    source: an array, or the path of a `.npy` file, an export directory, a PEFT
      adapter directory or a training MODEL_DIR.
    shape: the expected `(P, H)`, checked with an error that names the fix.
    checkpoint: which export of a MODEL_DIR: 'best', 'latest' or a step.

  Raises:
    PromptFileError: unreadable or of the wrong shape (PromptNotFoundError when
      missing); the message names the source.
  """
  if not isinstance(source, (str, os.PathLike)):
    array = np.asarray(source, np.float32)
    if array.ndim != 2:
      raise PromptFileError(f"A prompt must be [P, H]; got an array of shape "
                            f"{list(array.shape)}.")
    return _checked(array, shape, "The given prompt")
  path = pathlib.Path(source)
  if path.is_dir() and is_peft_dir(path):
    return _checked(load_peft(path), shape, f"PEFT adapter {path}")
  if path.is_dir() and layout.is_model_dir(path) and not _has_export(path, checkpoint):
    return _checked(_trained_prompt(path, checkpoint), shape, f"MODEL_DIR {path}")
  return read_npy(prompt_path(path, checkpoint), shape)


def prompt_path(source: PathLike, checkpoint: layout.Checkpoint = "best"
                ) -> pathlib.Path:
  """The `.npy` file a prompt source names (MODEL_DIRs: their `checkpoint` export)."""
  path = pathlib.Path(source)
  if not path.exists():
    raise PromptNotFoundError(f"Prompt source {path} does not exist (PROMPT_FILES / "
                              "--prompt / PROMPT_FILE / MODEL_DIR).")
  if path.is_file():
    return path
  if layout.is_model_dir(path):
    _check_method(path)
    if (path / layout.NUMPY_DIR).is_dir():
      path = layout.export_dir(path, checkpoint)
  return find_prompt_file(path)


def find_prompt_file(directory: PathLike, file_name: str = PROMPT_FILE
                     ) -> pathlib.Path:
  """The prompt file in a directory; in a MODEL_DIR, the newest numpy export.

  Looks for `<dir>/<file_name>`, then the highest step of
  `<dir>/checkpoint_<step>/<file_name>`, then of
  `<dir>/numpy_checkpoints/checkpoint_<step>/<file_name>`.
  """
  root = pathlib.Path(directory)
  if not root.is_dir():
    raise PromptNotFoundError(f"Prompt directory {root} does not exist.")
  if (root / file_name).is_file():
    return root / file_name
  for base in (root, root / layout.NUMPY_DIR):
    steps = []
    if base.is_dir():
      for child in base.iterdir():
        match = re.fullmatch(rf"{layout.STEP_PREFIX}_(\d+)", child.name)
        if match and (child / file_name).is_file():
          steps.append((int(match.group(1)), child / file_name))
    if steps:
      return max(steps)[1]
  raise PromptNotFoundError(
      f"No {file_name} in {root}: expected {root}/{layout.NUMPY_DIR}/checkpoint_<step>/"
      f"{file_name} (a prompt-tuning MODEL_DIR), {root}/checkpoint_<step>/{file_name}, "
      f"{root}/{file_name} or a PEFT {ADAPTER_CONFIG}.")


def read_npy(path: PathLike, shape: Shape = None) -> np.ndarray:
  """Reads a `[P, H]` prompt from a `.npy` file as float32.

  Raises:
    PromptFileError: the file is missing, not a `.npy` array (pickles are refused),
      not a 2-D float array, or not of `shape` when given.
  """
  path = os.fspath(path)
  expected = _expected(shape)
  try:
    with open(path, "rb") as f:
      _check_npy_header(f, path, expected)
      array = np.load(f, allow_pickle=False)
  except PromptFileError:
    raise
  except FileNotFoundError as e:
    raise PromptNotFoundError(f"Prompt file {path} does not exist (expected a .npy "
                              f"array of shape {expected}).") from e
  except Exception as e:  # numpy raises many types for malformed bytes.
    raise PromptFileError(f"Prompt file {path} is not a readable .npy array of shape "
                          f"{expected} ({type(e).__name__}: {e}).") from e
  if not isinstance(array, np.ndarray):  # e.g. an .npz archive
    raise PromptFileError(f"Prompt file {path} holds {type(array).__name__}, not a "
                          f"single .npy array of shape {expected}.")
  if array.ndim != 2:
    raise PromptFileError(f"Prompt file {path} has shape {list(array.shape)} (rank "
                          f"{array.ndim}); expected {expected}.")
  if not np.issubdtype(array.dtype, np.floating):
    raise PromptFileError(f"Prompt file {path} has dtype {array.dtype}; expected a "
                          f"float array of shape {expected}.")
  array = _checked(array, shape, f"Prompt file {path}")
  bad = ~np.isfinite(array)
  if bad.any():
    rows = sorted(set(np.nonzero(bad)[0].tolist()))
    raise PromptFileError(f"Prompt file {path} holds {int(bad.sum())} non-finite "
                          f"values (NaN/inf) in rows {rows[:8]}"
                          f"{' …' if len(rows) > 8 else ''}; expected a finite float "
                          f"array of shape {expected}: export it again from a good "
                          "checkpoint.")
  with np.errstate(all="ignore"):
    return array.astype(np.float32)


def check_prompt_file(path: PathLike, length: Optional[int] = None,
                      width: Optional[int] = None) -> None:
  """Checks a `.npy` prompt (shape `[length, width]`, float, finite) without any
  model: the entry points call it before reading the frozen checkpoint. A PEFT
  adapter directory is checked when it is loaded."""
  if os.path.isdir(path):
    return
  read_npy(path, (length, width))


def from_file(path: PathLike) -> Initializer:
  """A prompt initializer: the prompt stored at `path` (any `load_prompt` source:
  a `.npy` of shape `[P, H]`, a PEFT adapter directory, an export or a MODEL_DIR)."""
  if not isinstance(path, (str, os.PathLike)):
    raise ValueError(f"prompt_init.from_file needs the path of a .npy file (gin: "
                     f"PROMPT_FILE = '/path/prompt.npy'); got {path!r}.")

  def init(rng, shape, embedding=None):
    del rng, embedding
    return jnp.asarray(load_prompt(path, tuple(shape)))

  return init


def _expected(shape: Shape) -> str:
  shape = shape or (None, None)
  return (f"[{'P' if shape[0] is None else shape[0]}, "
          f"{'H' if shape[1] is None else shape[1]}]")


def _checked(array: np.ndarray, shape: Shape, what: str) -> np.ndarray:
  """`array` when its shape is `shape` (None entries match anything)."""
  if shape is None or all(e is None or e == a for e, a in zip(shape, array.shape)):
    return array
  fix = []
  if shape[0] is not None and shape[0] != array.shape[0]:
    fix.append(f"set PROMPT_LENGTH to {array.shape[0]}")
  if shape[1] is not None and shape[1] != array.shape[1]:
    fix.append(f"use a model with H = {array.shape[1]}")
  raise PromptFileError(f"{what} has shape {list(array.shape)}; expected "
                        f"{_expected(shape)} (prompt length P, model width H): "
                        f"{' or '.join(fix)}.")


def _check_method(model_dir: pathlib.Path) -> None:
  if not (model_dir / layout.CONFIG_JSON).is_file():
    return
  method = layout.read_record(model_dir).get("method")
  if method not in (None,) + PROMPT_METHODS:
    raise PromptFileError(f"{model_dir} was trained with method {method!r}, which has "
                          f"no encoder prompt (prompt sources come from prompt tuning "
                          f"or LoPA runs).")


def _has_export(model_dir: pathlib.Path, checkpoint: layout.Checkpoint) -> bool:
  try:
    return (layout.export_dir(model_dir, checkpoint) / PROMPT_FILE).is_file()
  except FileNotFoundError:
    return False


def _trained_prompt(model_dir: pathlib.Path, checkpoint: layout.Checkpoint
                    ) -> np.ndarray:
  """The prompt in a MODEL_DIR's orbax state (runs without a numpy export)."""
  _check_method(model_dir)
  try:
    trained = train_state.read_trainable(model_dir, checkpoint)
  except FileNotFoundError as e:
    raise PromptNotFoundError(f"{model_dir} holds no prompt export and no orbax "
                              f"state: {e}") from e
  if PROMPT_PATH not in trained:
    raise PromptFileError(f"{model_dir}: the trained parameters hold "
                          f"{sorted(trained)[:5]}, not {PROMPT_PATH}.")
  return np.asarray(trained[PROMPT_PATH], np.float32)


def _check_npy_header(f, path, expected):
  """Validates a `.npy` header before numpy allocates anything; rewinds `f`.

  Rejects non-float dtypes, ranks other than 2 and sizes that disagree with the
  file length, so that arbitrary bytes never make `np.load` allocate a huge array.
  """
  try:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
      shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
      raise ValueError(f"unsupported .npy format version {version}")
  except Exception as e:  # pylint: disable=broad-except
    raise PromptFileError(f"Prompt file {path} is not a .npy array of shape {expected} "
                          f"({type(e).__name__}: {e}).") from e
  if dtype.hasobject or not np.issubdtype(dtype, np.floating):
    raise PromptFileError(f"Prompt file {path} has dtype {dtype}; expected a float "
                          f"array of shape {expected}.")
  if len(shape) != 2:
    raise PromptFileError(f"Prompt file {path} has shape {list(shape)} (rank "
                          f"{len(shape)}); expected {expected}.")
  data_bytes = math.prod(int(d) for d in shape) * dtype.itemsize
  available = os.fstat(f.fileno()).st_size - f.tell()
  if data_bytes != available:
    raise PromptFileError(f"Prompt file {path} is truncated or has trailing bytes: its "
                          f"header promises {list(shape)} {dtype} ({data_bytes} bytes) "
                          f"but {available} bytes follow; expected {expected}.")
  f.seek(0)


# ---------------------------------------------------------------- writing


def save_prompt(path: PathLike, prompt,
                model: Optional[Mapping[str, object]] = None) -> str:
  """Writes a `[P, H]` prompt as float32 `.npy` (the released prompts' format),
  with `model` (a fingerprint record) as its sidecar when given."""
  prompt = np.asarray(prompt, dtype=np.float32)
  if prompt.ndim != 2:
    raise ValueError(f"A prompt is [P, H]; got shape {list(prompt.shape)} for {path}.")
  path = os.fspath(path)
  train_state.write_npy(path, prompt)
  if model is not None:
    fingerprint.write_sidecar(path, model)
  return path


def save_numpy(directory: PathLike, method: Method, params: Params,
               model: Optional[Mapping[str, object]] = None) -> Dict[str, str]:
  """Writes each of `method.exported(params)` as `<directory>/<name>.npy` (+ the
  `model` fingerprint sidecar when given).

  Returns:
    name → written path (empty for methods that export nothing, e.g. model tuning).
  """
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  written = {}
  for name, array in method.exported(params).items():
    path = os.path.join(directory, f"{name}.npy")
    train_state.write_npy(path, array)
    if model is not None:
      fingerprint.write_sidecar(path, model)
    written[name] = path
  return written


def check_model(source: PathLike, current: Mapping[str, object],
                allow: bool = False) -> bool:
  """Refuses a prompt (`.npy`, export directory or PEFT adapter) trained on another
  frozen model than `current` (`fingerprint.of_model`); see `fingerprint.check`."""
  return fingerprint.check(fingerprint.read_any(source), current, os.fspath(source),
                           allow=allow)


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
              base_model_name_or_path: Optional[str] = None,
              model: Optional[Mapping[str, object]] = None) -> str:
  """Writes a `[P, H]` prompt as a PEFT prompt-tuning adapter directory.

  `model` (a fingerprint record) goes into the safetensors header metadata.

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
  metadata = {"format": "pt"}
  if model is not None:
    metadata[fingerprint.SAFETENSORS_KEY] = json.dumps(dict(model), sort_keys=True)
  save_file({PEFT_KEY: prompt}, os.path.join(directory, ADAPTER_WEIGHTS),
            metadata=metadata)
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
