"""Tasks tokenized with a Hugging Face tokenizer (GPT-2, Llama 3, Qwen2, ... BPE).

Every registered task tokenizes with the project's SentencePiece vocabulary; a
pretrained decoder-only checkpoint needs its own tokenizer. `retokenized` registers a
copy of a task (same source, preprocessors, postprocessor and metrics) whose inputs
and targets are tokenized by the `tokenizer.json` in a local Hugging Face model
directory, each followed by the tokenizer's EOS (GPT-2: "<|endoftext|>"), which is
the separator the prefix-tuning paper used between table and sentence.

  MIXTURE_OR_TASK_NAME = @tasks.hf_vocab.retokenized()
  tasks.hf_vocab.retokenized.task = "lm_e2e_nlg"
  tasks.hf_vocab.retokenized.tokenizer_dir = "/models/gpt2"

The copy is named "<task>.<directory name>" (e.g. "lm_e2e_nlg.gpt2"). Needs the
`tokenizers` package (installed with transformers).
"""
import json
import os
from typing import List, Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from tasks import labels
from tasks import registry


class TokenizerError(ValueError):
  """The tokenizer directory is missing a file or an EOS token."""


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _token_text(value) -> Optional[str]:
  if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
    value = value.get("content")
  return value if isinstance(value, str) else None


class HfTokenizerVocabulary(seqio.Vocabulary):
  """A seqio vocabulary over a Hugging Face `tokenizer.json` (no extra ids).

  EOS comes from `tokenizer_config.json` ("eos_token"), else `config.json`
  ("eos_token_id"). `encode` adds no special tokens (no BOS: the decoder-only
  converter adds the model's BOS itself). `decode` stops at the first EOS and
  drops special tokens.
  """

  def __init__(self, tokenizer_dir: str):
    super().__init__(extra_ids=0)
    try:
      import tokenizers  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise TokenizerError("Hugging Face tokenizers need the `tokenizers` package: "
                           "pip install tokenizers (or transformers).") from e
    self.tokenizer_dir = os.path.abspath(tokenizer_dir)
    path = os.path.join(self.tokenizer_dir, "tokenizer.json")
    if not os.path.exists(path):
      raise TokenizerError(f"{path} does not exist: point tokenizer_dir at a Hugging "
                           "Face model directory that has a fast tokenizer "
                           "(tokenizer.json).")
    self._tokenizer = tokenizers.Tokenizer.from_file(path)
    config = _read_json(os.path.join(self.tokenizer_dir, "tokenizer_config.json"))
    eos_text = _token_text(config.get("eos_token"))
    eos = self._tokenizer.token_to_id(eos_text) if eos_text else None
    if eos is None:
      eos = _read_json(os.path.join(self.tokenizer_dir, "config.json")).get(
          "eos_token_id")
      eos = eos[0] if isinstance(eos, list) else eos
    if eos is None:
      raise TokenizerError(f"{self.tokenizer_dir}: no EOS token (tokenizer_config.json "
                           "'eos_token' or config.json 'eos_token_id'); tasks need one "
                           "to end inputs and targets.")
    self._eos_id = int(eos)
    unk_text = _token_text(config.get("unk_token"))
    self._unk_id = self._tokenizer.token_to_id(unk_text) if unk_text else None

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def unk_id(self) -> Optional[int]:
    return self._unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> List[int]:
    return self._tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids]
    if self._eos_id in ids:
      ids = ids[:ids.index(self._eos_id)]
    return self._tokenizer.decode(ids, skip_special_tokens=True)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    def encode(text):  # a 0-d bytes array (or bytes)
      text = text.item() if isinstance(text, np.ndarray) else text
      return np.asarray(self._encode(text.decode("utf-8")), np.int32)
    ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
    ids.set_shape([None])
    return ids

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    def decode(rows):
      flat = rows.reshape(-1, rows.shape[-1]) if rows.ndim else rows.reshape(1, 0)
      texts = [self._decode(row).encode("utf-8") for row in flat]
      return np.asarray(texts, object).reshape(rows.shape[:-1])
    text = tf.numpy_function(decode, [ids], tf.string, stateful=False)
    text.set_shape(ids.shape[:-1])
    return text

  def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    # seqio's version pads after EOS with id 0, a real token in BPE vocabularies;
    # `_decode` stops at EOS instead.
    return self._decode_tf(ids)

  def __eq__(self, other) -> bool:
    return (isinstance(other, HfTokenizerVocabulary)
            and other.tokenizer_dir == self.tokenizer_dir)

  def __hash__(self):
    return hash(self.tokenizer_dir)

  def __str__(self) -> str:
    return f"HfTokenizerVocabulary({self.tokenizer_dir})"


@gin.configurable(module="tasks.hf_vocab")
def retokenized(task: str = gin.REQUIRED, tokenizer_dir: str = gin.REQUIRED,
                name: Optional[str] = None) -> str:
  """Registers `task` re-tokenized with a Hugging Face tokenizer; returns its name.

  Args:
    task: a registered task (not a mixture).
    tokenizer_dir: local Hugging Face model directory with tokenizer.json.
    name: the new task's name (default "<task>.<basename of tokenizer_dir>").

  Raises:
    TokenizerError: the directory has no tokenizer.json or no EOS token.
    ValueError: `task` is a mixture or unknown.
  """
  original = seqio.get_mixture_or_task(task)
  if not isinstance(original, seqio.Task):
    raise ValueError(f"{task!r} is a mixture; re-tokenize its tasks one by one and "
                     "build a mixture of the results.")
  vocabulary = HfTokenizerVocabulary(tokenizer_dir)
  label = os.path.basename(vocabulary.tokenizer_dir.rstrip("/"))
  name = name or f"{task}.{label}"
  name = "".join(c if c.isalnum() or c in "._:" else "_" for c in name)
  features = {k: seqio.Feature(vocabulary=vocabulary, add_eos=True,
                               required=v.required)
              for k, v in original.output_features.items()}
  registry._replace(seqio.TaskRegistry, name)  # pylint: disable=protected-access
  copy = seqio.Task(name, source=original.source, preprocessors=original.preprocessors,
                    output_features=features, postprocess_fn=original.postprocess_fn,
                    metric_fns=list(original.metric_fns))
  seqio.TaskRegistry.add_provider(name, copy)
  registry._OURS.add(id(copy))  # pylint: disable=protected-access
  labels.register_labels(name, labels.get_label_strings(task),
                         labels.get_task_prefix(task))
  return name
