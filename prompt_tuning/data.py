"""seqio tasks → numpy batches for the trainer and the evaluator.

Training batches (`train_batches`):
  * encoder-decoder features from `seqio.EncDecFeatureConverter(pack=False)`:
    `encoder_input_tokens [b, T_in]`, `decoder_input_tokens`, `decoder_target_tokens`,
    `decoder_loss_weights [b, T_out]` (prompt tuning does not support packing);
  * a deterministic order from `seed` (seqio's seeded shuffle, repeated forever);
  * per-host sharding with `seqio.ShardInfo(process_index, process_count)`: each
    host reads its own `b = B / num_hosts` rows of every global batch;
  * resumable: `start_batch=n` skips the `n` batches a previous run consumed, so
    the stream continues exactly where the checkpoint left it;
  * `truncated [b]` (int32 0/1): whether an example was longer than
    `task_feature_lengths` and was cut (seqio's trimming is unchanged; the trainer
    counts these in its summaries).

Start-up checks (`check_task`): the task name exists (else close matches are listed)
and its vocabularies fit the model's embedding table.

Evaluation examples (`eval_examples`): the task's split in order, unshuffled, with
the raw (pre-tokenized) fields kept for the postprocessor and the metrics.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.errors import UserError

Batch = Dict[str, np.ndarray]
MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens",
                  "decoder_target_tokens", "decoder_loss_weights")


def feature_converter() -> seqio.FeatureConverter:
  return seqio.EncDecFeatureConverter(pack=False)


class UnknownTaskError(UserError, ValueError):
  """No seqio task or mixture of that name is registered (close matches listed)."""


def get_task(name: str):
  """The registered seqio task or mixture, or an error listing close matches."""
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    pass
  known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  close = difflib.get_close_matches(str(name), known, n=5, cutoff=0.6)
  hint = (f" Did you mean {', '.join(repr(c) for c in close)}?" if close else
          f" ({len(known)} are registered; `python -m tasks.list` lists them.)")
  raise UnknownTaskError(
      f"No seqio task or mixture named {name!r} is registered.{hint} Check "
      "--gin.MIXTURE_OR_TASK_NAME; a task defined in your own module must be "
      "imported first (add `import my_tasks` to a gin file).")


class VocabularyTooLargeError(UserError, ValueError):
  """A task's vocabulary has ids beyond the model's embedding table."""


def check_task(mixture_or_task_name: str, vocab_size: int):
  """Start-up check: the task exists and its token ids fit the embedding table.

  Args:
    mixture_or_task_name: the registered task or mixture.
    vocab_size: rows of the model's embedding table (`T5Config.vocab_size`).

  Returns:
    The task or mixture.

  Raises:
    UnknownTaskError: no such task (close matches listed).
    VocabularyTooLargeError: a feature's vocabulary is larger than the table.
  """
  provider = get_task(mixture_or_task_name)
  for feature_name, feature in provider.output_features.items():
    size = getattr(feature.vocabulary, "vocab_size", None)
    if size is not None and int(size) > int(vocab_size):
      raise VocabularyTooLargeError(
          f"Task {mixture_or_task_name!r}: its {feature_name!r} vocabulary "
          f"({_describe(feature.vocabulary)}) has {int(size)} ids but the model's embedding "
          f"table has {int(vocab_size)} rows (T5Config.vocab_size), so larger ids "
          "would index past it. Fix: use the vocabulary the model was trained with "
          "(e.g. PROMPT_TUNING_VOCAB or the task's vocabulary), or a model (gin "
          "models/*.gin + INITIAL_CHECKPOINT_PATH) whose vocab_size is at least "
          f"{int(size)}.")
  return provider


def _describe(vocabulary) -> str:
  path = getattr(vocabulary, "sentencepiece_model_file", None)
  return f"{type(vocabulary).__name__} {path}" if path else type(vocabulary).__name__


TRUNCATED = "truncated"


def _flagging_converter() -> seqio.FeatureConverter:
  """The training converter, passing the `truncated` flag `[1]` through."""
  return seqio.EncDecFeatureConverter(pack=False, passthrough_features={
      TRUNCATED: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)})


def _flag_truncated(ex: Dict[str, tf.Tensor], lengths: Mapping[str, int],
                    output_features: Mapping[str, Any]) -> Dict[str, tf.Tensor]:
  """Adds `truncated [1]`: the example is (or was) longer than `lengths`.

  Cut here: token ids longer than the length (seqio's final trim). Cut earlier by
  a preprocessor (`append_eos_after_trim`, used by T5-style tasks): the ids fill
  the length but the `<feature>_pretokenized` text, tokenized again, is longer.
  """
  over = tf.constant(False)
  for key, length in lengths.items():
    if key not in ex or ex[key].shape.rank != 1:
      continue
    n = tf.shape(ex[key])[0]
    over = tf.logical_or(over, n > length)
    text = ex.get(f"{key}_pretokenized")
    feature = output_features.get(key)
    if (text is not None and text.dtype == tf.string and text.shape.rank == 0
        and feature is not None):
      full = tf.shape(feature.vocabulary.encode_tf(text))[0] + int(feature.add_eos)
      over = tf.logical_or(over, tf.logical_and(n >= length, full > n))
  return {**ex, TRUNCATED: tf.reshape(tf.cast(over, tf.int32), [1])}


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
    `{feature: np.ndarray [batch_size, length]}` with the `MODEL_FEATURES`, and
    `truncated [batch_size]` (1 where an example was cut to the feature lengths).
  """
  shard_info = seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None
  provider = get_task(mixture_or_task_name)
  lengths = dict(task_feature_lengths)
  # seqio.get_dataset, with trimming done here after noting which examples it cuts.
  extra = {"copy_pretokenized": True} if isinstance(provider, seqio.Mixture) else {}
  ds = provider.get_dataset(
      lengths, split=split, use_cached=use_cached, shuffle=shuffle, seed=seed,
      shard_info=shard_info, num_epochs=None, trim_output_features=False, **extra)
  ds = ds.map(functools.partial(_flag_truncated, lengths=lengths,
                                output_features=provider.output_features),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = seqio.utils.trim_dataset(ds, lengths, provider.output_features)
  ds = _flagging_converter()(ds, {**lengths, TRUNCATED: 1})
  ds = ds.map(lambda ex: {**{k: ex[k] for k in MODEL_FEATURES},
                          TRUNCATED: ex[TRUNCATED][0]})
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
    num_truncated: examples longer than the feature lengths (cut to fit).
  """
  task: Any
  raw: List[Dict[str, Any]]
  features: List[Batch]
  num_truncated: int = 0

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
                  use_cached: bool = False,
                  convert: Optional[Callable[[Any, Dict[str, int]], Any]] = None
                  ) -> EvalExamples:
  """Reads a task's split in order (unshuffled), keeping raw and model features.

  `convert(raw_ds, lengths) -> features_ds` replaces the encoder-decoder feature
  converter (e.g. `data_decoder`'s decoder-only one); its features are kept whole.

  Examples longer than `task_feature_lengths` are cut, as in training, and counted
  in `EvalExamples.num_truncated` (flagged as `train_batches` flags them).
  """
  if split not in task.splits:
    raise ValueError(f"Task {task.name!r} has no split {split!r}; it has "
                     f"{list(task.splits)}. Set --gin.EVAL_SPLIT (or the run's split).")
  lengths = dict(task_feature_lengths)
  raw_ds = task.get_dataset(lengths, split=split, shuffle=False, use_cached=use_cached,
                            num_epochs=1, trim_output_features=False)
  if max_examples:
    raw_ds = raw_ds.take(max_examples)
  raw_ds = raw_ds.map(functools.partial(_flag_truncated, lengths=lengths,
                                        output_features=task.output_features))
  raw_ds = seqio.utils.trim_dataset(raw_ds, lengths, task.output_features)
  flags = raw_ds.map(lambda ex: ex[TRUNCATED][0])
  raw_ds = raw_ds.map(lambda ex: {k: v for k, v in ex.items() if k != TRUNCATED})
  if convert is None:
    features_ds = feature_converter()(raw_ds, lengths).map(
        lambda ex: {k: ex[k] for k in MODEL_FEATURES})
  else:
    features_ds = convert(raw_ds, lengths)
  raw = list(_options(raw_ds).as_numpy_iterator())
  num_truncated = int(sum(_options(flags).as_numpy_iterator()))
  features = list(_options(features_ds).as_numpy_iterator())
  if len(raw) != len(features):
    raise RuntimeError(f"Task {task.name}: {len(raw)} raw examples but "
                       f"{len(features)} converted ones.")
  return EvalExamples(task, raw, features, num_truncated)


def padded_batches(features: Sequence[Batch], batch_size: int,
                   keys: Sequence[str] = MODEL_FEATURES) -> Iterator[Batch]:
  """Groups examples into `[batch_size, …]` batches of `keys`, padding the last
  with zeros.

  Padding rows have all-zero tokens, loss weights (and, for decoder-only batches,
  segment ids and prompt masks); callers drop their outputs (the number of real
  rows is `min(batch_size, remaining)`).
  """
  for start in range(0, len(features), batch_size):
    chunk = list(features[start:start + batch_size])
    batch = {k: np.stack([ex[k] for ex in chunk]) for k in keys}
    missing = batch_size - len(chunk)
    if missing:
      batch = {k: np.concatenate([v, np.zeros((missing,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch
