"""seqio tasks → numpy batches for the trainer and the evaluator.

Training batches (`train_batches`):
  * encoder-decoder features from `seqio.EncDecFeatureConverter(pack=False)`:
    `encoder_input_tokens [b, T_in]`, `decoder_input_tokens`, `decoder_target_tokens`,
    `decoder_loss_weights [b, T_out]` (prompt tuning does not support packing);
  * a deterministic order from `seed` (seqio's seeded shuffle, repeated forever);
  * per-host sharding with `seqio.ShardInfo(process_index, process_count)`: each
    host reads its own `b = B / num_hosts` rows of every global batch;
  * resumable: `start_batch=n` skips the `n` batches a previous run consumed, so
    the stream continues exactly where the checkpoint left it.

Evaluation examples (`eval_examples`): the task's split in order, unshuffled, with
the raw (pre-tokenized) fields kept for the postprocessor and the metrics.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

Batch = Dict[str, np.ndarray]
MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens",
                  "decoder_target_tokens", "decoder_loss_weights")


def feature_converter() -> seqio.FeatureConverter:
  return seqio.EncDecFeatureConverter(pack=False)


def get_task(name: str):
  """The registered seqio task or mixture, or an error saying how to register it."""
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ValueError(
        f"No seqio task or mixture named {name!r} is registered ({e}). Check "
        "--gin.MIXTURE_OR_TASK_NAME, and that the module registering it is imported "
        "(e.g. `import tasks`, or --gin.cli.import_modules=['my_tasks']).") from None


def _options(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def train_batches(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                  batch_size: int, *, split: str = "train", seed: int = 0,
                  shard_index: int = 0, num_shards: int = 1, start_batch: int = 0,
                  use_cached: bool = False, shuffle: bool = True) -> Iterator[Batch]:
  """An endless iterator of this host's training batches.

  Args:
    mixture_or_task_name: registered seqio task or mixture.
    task_feature_lengths: e.g. `{'inputs': 512, 'targets': 8}`.
    batch_size: rows per host (the global batch divided by the number of hosts).
    split: dataset split.
    seed: shuffle seed; the same seed gives the same order on every run.
    shard_index / num_shards: this host's shard (`jax.process_index()` / count).
    start_batch: number of batches already consumed (from the checkpoint).
    use_cached: read seqio's offline cache.
    shuffle: shuffle the examples (off for debugging).

  Yields:
    `{feature: np.ndarray [batch_size, length]}` with the `MODEL_FEATURES`.
  """
  shard_info = seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None
  ds = seqio.get_dataset(
      get_task(mixture_or_task_name), task_feature_lengths, feature_converter(),
      dataset_split=split, use_cached=use_cached, shuffle=shuffle, num_epochs=None,
      shard_info=shard_info, seed=seed, verbose=False)
  ds = ds.map(lambda ex: {k: ex[k] for k in MODEL_FEATURES})
  ds = ds.batch(batch_size, drop_remainder=True)
  if start_batch:
    logging.info("Skipping %d batches already consumed to resume the data stream.",
                 start_batch)
    ds = ds.skip(start_batch)
  ds = _options(ds).prefetch(tf.data.AUTOTUNE)
  return ds.as_numpy_iterator()


@dataclasses.dataclass
class EvalExamples:
  """One task's evaluation split, in order.

  Attributes:
    task: the seqio task.
    raw: the preprocessed (pre-feature-conversion) examples, as numpy; used by the
      postprocessor (`example=`) and to compute the targets.
    features: per example, the model features (`MODEL_FEATURES`).
  """
  task: Any
  raw: List[Dict[str, Any]]
  features: List[Batch]

  @property
  def targets(self) -> List[Any]:
    """Postprocessed targets (`is_target=True`) as seqio's Evaluator computes them."""
    out = []
    for ex in self.raw:
      target = ex.get("targets_pretokenized")
      if target is None:
        target = self.task.output_features["targets"].vocabulary.decode(
            [int(t) for t in ex["targets"]])
      if isinstance(target, bytes):
        target = target.decode("utf-8")
      out.append(self.task.postprocess_fn(target, example=ex, is_target=True))
    return out


def tasks_of(mixture_or_task_name: str) -> List[Any]:
  """The sub-tasks of a mixture (or the task itself) that have metrics."""
  provider = get_task(mixture_or_task_name)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  return list(tasks)


def eval_examples(task: Any, task_feature_lengths: Mapping[str, int],
                  split: str = "validation", max_examples: Optional[int] = None,
                  use_cached: bool = False) -> EvalExamples:
  """Reads a task's split in order (unshuffled), keeping raw and model features."""
  if split not in task.splits:
    raise ValueError(f"Task {task.name!r} has no split {split!r}; it has "
                     f"{list(task.splits)}. Set --gin.EVAL_SPLIT (or the run's split).")
  lengths = dict(task_feature_lengths)
  raw_ds = task.get_dataset(lengths, split=split, shuffle=False, use_cached=use_cached,
                            num_epochs=1)
  if max_examples:
    raw_ds = raw_ds.take(max_examples)
  features_ds = feature_converter()(raw_ds, lengths)
  raw = list(_options(raw_ds).as_numpy_iterator())
  features = [{k: ex[k] for k in MODEL_FEATURES}
              for ex in _options(features_ds).as_numpy_iterator()]
  if len(raw) != len(features):
    raise RuntimeError(f"Task {task.name}: {len(raw)} raw examples but "
                       f"{len(features)} converted ones.")
  return EvalExamples(task, raw, features)


def padded_batches(features: Sequence[Batch], batch_size: int) -> Iterator[Batch]:
  """Groups examples into `[batch_size, …]` batches, padding the last with zeros.

  Padding rows have all-zero tokens and loss weights; callers drop their outputs
  (the number of real rows is `min(batch_size, remaining)`).
  """
  for start in range(0, len(features), batch_size):
    chunk = list(features[start:start + batch_size])
    batch = {k: np.stack([ex[k] for ex in chunk]) for k in MODEL_FEATURES}
    missing = batch_size - len(chunk)
    if missing:
      batch = {k: np.concatenate([v, np.zeros((missing,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch
