"""seqio tasks -> batches for decoder-only (causal) language models.

Any registered task works unchanged: its tokenized `inputs` (optional) and `targets`
become one sequence, and the loss is on the targets only. For an example with input
tokens x (n <= L_in, with the EOS the task appends, which separates inputs from
targets) and target tokens y (m <= L_out, ending in EOS), T = L_in + L_out and
P = L_in + 1:

  decoder_target_tokens  [T]  x ++ y, then zeros
  decoder_input_tokens   [T]  [bos] ++ (x ++ y)[:-1], then zeros (shifted right)
  decoder_loss_weights   [T]  1 on the m target positions, 0 on inputs and padding
  decoder_segment_ids    [T]  1 on the n + m real tokens, 0 on padding
  decoder_positions      [T]  0 .. n+m-1 on real tokens, 0 on padding
  decoder_prompt_tokens  [P]  [bos] ++ x, LEFT-padded with zeros (for generation)
  decoder_prompt_mask    [P]  1 on the n + 1 real prompt tokens
  decoder_prompt_positions [P] 0 .. n on real prompt tokens, 0 on padding

Position t of `decoder_input_tokens` predicts position t of `decoder_target_tokens`,
so the logits at the last prompt token (x's EOS) predict y[0]: generation feeds
`decoder_prompt_tokens` (prefilled once, rows right-aligned so every row's next
token is at the same column), then decodes up to L_out tokens and stops at EOS.
Padding is marked by the segment ids / prompt mask, never by token value: id 0 is a
real token in GPT-2's vocabulary ("!").

`bos_id` is the token fed before the first input token: 0 by default (seqio's and
T5's decoder start), the model's BOS for a pretrained checkpoint (GPT-2:
<|endoftext|> = 50256; Llama: <s> = 1). The model config says which
(`bos_token_id`, read by `training/model_io.of`); `batches(..., decoder_only=...)`
picks the converter.
No packing (prompt tuning does not support it).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning import data

Batch = Dict[str, np.ndarray]
TRAIN_FEATURES = ("decoder_input_tokens", "decoder_target_tokens",
                  "decoder_loss_weights", "decoder_segment_ids", "decoder_positions")
PROMPT_FEATURES = ("decoder_prompt_tokens", "decoder_prompt_mask",
                   "decoder_prompt_positions")
MODEL_FEATURES = TRAIN_FEATURES + PROMPT_FEATURES


def model_feature_lengths(task_feature_lengths: Mapping[str, int]) -> Dict[str, int]:
  """{"decoder": T = L_in + L_out, "prompt": P = L_in + 1}."""
  inputs = int(task_feature_lengths.get("inputs", 0))
  return {"decoder": inputs + int(task_feature_lengths["targets"]),
          "prompt": inputs + 1}


def _pad_right(t: tf.Tensor, length: int) -> tf.Tensor:
  return tf.pad(t, [[0, length - tf.shape(t)[0]]])


def _pad_left(t: tf.Tensor, length: int) -> tf.Tensor:
  return tf.pad(t, [[length - tf.shape(t)[0], 0]])


def convert_example(ex: Mapping[str, tf.Tensor], task_feature_lengths: Mapping[str, int],
                    bos_id: int = 0) -> Dict[str, tf.Tensor]:
  """One example's `MODEL_FEATURES` (see the module docstring); int32 throughout.

  Args:
    ex: `targets [m]` and optionally `inputs [n]`, int token ids, already trimmed to
      `task_feature_lengths` (seqio's trim does that).
    task_feature_lengths: {"inputs": L_in, "targets": L_out}.
    bos_id: the start token.
  """
  lengths = model_feature_lengths(task_feature_lengths)
  total, prompt_length = lengths["decoder"], lengths["prompt"]
  y = tf.cast(ex["targets"], tf.int32)
  x = tf.cast(ex["inputs"], tf.int32) if "inputs" in ex else tf.zeros([0], tf.int32)
  n, m = tf.shape(x)[0], tf.shape(y)[0]
  tf.debugging.assert_less_equal(n, prompt_length - 1, "inputs longer than L_in")
  tf.debugging.assert_less_equal(m, total - prompt_length + 1, "targets longer than L_out")
  sequence = tf.concat([x, y], axis=0)
  bos = tf.constant([bos_id], tf.int32)
  real = tf.ones([n + m], tf.int32)
  prompt = tf.concat([bos, x], axis=0)
  return {
      "decoder_target_tokens": _pad_right(sequence, total),
      "decoder_input_tokens": _pad_right(
          tf.concat([bos, sequence], axis=0)[:n + m], total),
      "decoder_loss_weights": _pad_right(
          tf.concat([tf.zeros([n], tf.int32), tf.ones([m], tf.int32)], axis=0), total),
      "decoder_segment_ids": _pad_right(real, total),
      "decoder_positions": _pad_right(tf.range(n + m, dtype=tf.int32), total),
      "decoder_prompt_tokens": _pad_left(prompt, prompt_length),
      "decoder_prompt_mask": _pad_left(tf.ones([n + 1], tf.int32), prompt_length),
      "decoder_prompt_positions": _pad_left(tf.range(n + 1, dtype=tf.int32),
                                            prompt_length),
  }


def convert(ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int],
            bos_id: int = 0, passthrough: Sequence[str] = ()) -> tf.data.Dataset:
  """Maps a trimmed task dataset to `MODEL_FEATURES` (+ `passthrough` features).

  Raises:
    ValueError: the dataset has no `targets`, or `task_feature_lengths` lacks it.
  """
  if "targets" not in ds.element_spec:
    raise ValueError("The decoder-only converter needs a 'targets' feature; the task "
                     f"gives {sorted(ds.element_spec)}.")
  if "targets" not in task_feature_lengths:
    raise ValueError("task_feature_lengths needs 'targets' (and 'inputs' for tasks "
                     f"with inputs); got {dict(task_feature_lengths)}.")
  if "inputs" in ds.element_spec and "inputs" not in task_feature_lengths:
    raise ValueError("The task has 'inputs' but task_feature_lengths gives no "
                     "'inputs' length; set TASK_FEATURE_LENGTHS['inputs'].")
  lengths = dict(task_feature_lengths)

  def fn(ex):
    out = convert_example(ex, lengths, bos_id)
    out.update({k: ex[k] for k in passthrough})
    return out

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def train_batches(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
                  batch_size: int, *, bos_id: int = 0, split: str = "train",
                  seed: int = 0, shard_index: int = 0, num_shards: int = 1,
                  start_batch: int = 0, use_cached: bool = False,
                  shuffle: bool = True) -> Iterator[Batch]:
  """`data.train_batches` for decoder-only models (same order, sharding, resume).

  Yields:
    `{feature: [batch_size, T]}` for `TRAIN_FEATURES`, `PROMPT_FEATURES`
    `[batch_size, P]` and `truncated [batch_size]`.
  """
  shard_info = seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None
  provider = data.get_task(mixture_or_task_name)
  lengths = dict(task_feature_lengths)
  extra = {"copy_pretokenized": True} if isinstance(provider, seqio.Mixture) else {}
  ds = provider.get_dataset(
      lengths, split=split, use_cached=use_cached, shuffle=shuffle, seed=seed,
      shard_info=shard_info, num_epochs=None, trim_output_features=False, **extra)
  ds = ds.map(functools.partial(data._flag_truncated, lengths=lengths,  # pylint: disable=protected-access
                                output_features=provider.output_features),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = seqio.utils.trim_dataset(ds, lengths, provider.output_features)
  ds = convert(ds, lengths, bos_id, passthrough=(data.TRUNCATED,))
  ds = ds.map(lambda ex: {**{k: ex[k] for k in MODEL_FEATURES},
                          data.TRUNCATED: ex[data.TRUNCATED][0]})
  ds = ds.batch(batch_size, drop_remainder=True)
  if start_batch:
    logging.info("Skipping %d batches already consumed to resume the data stream.",
                 start_batch)
    ds = ds.skip(start_batch)
  ds = data._options(ds).prefetch(tf.data.AUTOTUNE)  # pylint: disable=protected-access
  return ds.as_numpy_iterator()


def eval_examples(task: Any, task_feature_lengths: Mapping[str, int],
                  split: str = "validation", max_examples: Optional[int] = None,
                  use_cached: bool = False, bos_id: int = 0) -> data.EvalExamples:
  """`data.eval_examples` with decoder-only features (`MODEL_FEATURES` here)."""
  def decoder_only(raw_ds, lengths):
    return convert(raw_ds.map(lambda ex: {k: ex[k] for k in ("inputs", "targets")
                                          if k in ex}), lengths, bos_id)

  return data.eval_examples(task, task_feature_lengths, split, max_examples,
                            use_cached, convert=decoder_only)


def padded_batches(features: Sequence[Batch], batch_size: int) -> Iterator[Batch]:
  """`data.padded_batches` of the decoder-only features (see there)."""
  return data.padded_batches(features, batch_size, MODEL_FEATURES)


def batches(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
            batch_size: int, *, decoder_only: bool, bos_id: int = 0,
            **kwargs) -> Iterator[Batch]:
  """Training batches for either model family: the one switch entry points call.

  Args:
    decoder_only: `families.is_decoder_only(model_config)`; False gives
      `data.train_batches`
      (encoder-decoder features), True this module's features.
    bos_id: the model config's `bos_token_id` (decoder-only only).
    **kwargs: split, seed, shard_index, num_shards, start_batch, use_cached, shuffle.
  """
  if decoder_only:
    return train_batches(mixture_or_task_name, task_feature_lengths, batch_size,
                         bos_id=bos_id, **kwargs)
  return data.train_batches(mixture_or_task_name, task_feature_lengths, batch_size,
                            **kwargs)


def eval_examples_for(task: Any, task_feature_lengths: Mapping[str, int], *,
                      decoder_only: bool, bos_id: int = 0, **kwargs) -> data.EvalExamples:
  """`eval_examples` for either model family (see `batches`)."""
  if decoder_only:
    return eval_examples(task, task_feature_lengths, bos_id=bos_id, **kwargs)
  return data.eval_examples(task, task_feature_lengths, **kwargs)

