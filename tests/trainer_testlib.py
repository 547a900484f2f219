"""Shared pieces of the trainer tests: a tiny model and an in-memory seqio task.

Imported by tests/test_trainer*.py, tests/test_partitioning*.py and by the
subprocesses those tests start (run with `tests/` on `sys.path`).
"""
from __future__ import annotations

import functools

import numpy as np

from prompt_tuning.methods.base import Method
from prompt_tuning.models.config import preset

TASK = "trainer_test_copy"
FEATURE_LENGTHS = {"inputs": 12, "targets": 6}
LABELS = ("yes", "no")


def tiny_config(**overrides):
  """A ~30K-parameter T5.1.1 over the byte vocabulary (259 ids, padded to 264)."""
  values = dict(vocab_size=264, emb_dim=16, num_heads=4, head_dim=4, mlp_dim=32,
                num_encoder_layers=1, num_decoder_layers=1,
                relative_attention_num_buckets=8, relative_attention_max_distance=16,
                dropout_rate=0.1)
  values.update(overrides)
  return preset("tiny", **values)


def model_tuning() -> Method:
  return Method(name="model", trainable=(".*",))


def partial_tuning() -> Method:
  """Trains the decoder MLPs only: a frozen / trainable split without a method."""
  return Method(name="decoder_mlp", trainable=(r"decoder/.*/mlp/.*",))


def _examples(split: str, n: int):
  rng = np.random.RandomState({"train": 0, "validation": 1}[split])
  words = ["ab", "cd", "ef", "gh", "ij"]
  inputs, targets = [], []
  for i in range(n):
    word = words[rng.randint(len(words))]
    inputs.append(f"say {word} {i}")
    targets.append(LABELS[len(word) % 2] if word in ("ab", "cd") else "yes")
  return {"inputs": inputs, "targets": targets}


def _dataset_fn(split, shuffle_files, seed=None):
  del shuffle_files, seed
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.data.Dataset.from_tensor_slices(
      _examples(split, {"train": 40, "validation": 10}[split]))


def _accuracy(targets, predictions):
  return {"accuracy": 100.0 * float(np.mean(
      [t == p for t, p in zip(targets, predictions)]))}


def register_task(name: str = TASK) -> str:
  """Registers (once) a tiny byte-vocabulary text-to-text task with train/validation."""
  import seqio  # pylint: disable=g-import-not-at-top  (slow: imports TensorFlow)
  if name in seqio.TaskRegistry.names():
    return name
  vocab = seqio.ByteVocabulary()
  features = {k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")}
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(_dataset_fn, splits=["train", "validation"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features=features,
      metric_fns=[_accuracy])
  return name


def fixed_batches(batch_size: int, seed: int = 0, vocab: int = 259, shard: int = 0,
                  num_shards: int = 1):
  """`start -> iterator` of deterministic random batches (this shard's rows)."""

  def make(step):
    rng = np.random.RandomState(seed * 100003 + step)
    enc = rng.randint(3, vocab, size=(batch_size, FEATURE_LENGTHS["inputs"]))
    tgt = rng.randint(3, vocab, size=(batch_size, FEATURE_LENGTHS["targets"]))
    enc[:, -2:] = 0
    tgt[:, -1:] = 0
    dec = np.concatenate([np.zeros((batch_size, 1), int), tgt[:, :-1]], axis=1)
    batch = {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
             "decoder_target_tokens": tgt,
             "decoder_loss_weights": (tgt > 0).astype(np.int32)}
    rows = batch_size // num_shards
    return {k: v[shard * rows:(shard + 1) * rows].astype(np.int32)
            for k, v in batch.items()}

  def batches(start):
    step = start
    while True:
      yield make(step)
      step += 1

  return batches


def train_config(model_dir, **overrides):
  from prompt_tuning.training import trainer  # pylint: disable=g-import-not-at-top
  values = dict(model_dir=str(model_dir), mixture_or_task_name=TASK,
                task_feature_lengths=FEATURE_LENGTHS, train_steps=5, batch_size=8,
                eval_period=-1, checkpoint_period=100, log_period=1, seed=0)
  values.update(overrides)
  return trainer.TrainConfig(**values)


@functools.lru_cache(None)
def adam(lr: float = 1e-2):
  import optax  # pylint: disable=g-import-not-at-top
  return optax.adam(lr)
