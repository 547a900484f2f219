"""TFDS data sources with per-split transformations.

`TransformedTfdsDataSource` reads a TFDS dataset like `seqio.TfdsDataSource`
but can derive a split from another one, e.g. WebNLG's seen-category test set
(filtered from `test_all`) or a fixed low-data subset of a training set.
"""
from typing import Callable, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

_plain = tf.autograph.experimental.do_not_convert
SplitTransform = Callable[[tf.data.Dataset], tf.data.Dataset]


class TransformedTfdsDataSource(seqio.TfdsDataSource):
  """A TFDS source whose splits may be filtered or subsampled.

  A transformed split is always read whole in TFDS's canonical (unshuffled)
  order, so the transform sees the same examples in every run (and on every
  host: the result is sharded afterwards); the task shuffles as usual.
  """

  def __init__(self,
               tfds_name: str,
               splits: Mapping[str, str],
               transforms: Optional[Mapping[str, SplitTransform]] = None,
               sizes: Optional[Mapping[str, int]] = None):
    """Constructor.

    Args:
      tfds_name: "name/config:version".
      splits: seqio split -> TFDS split (several may map to one TFDS split).
      transforms: seqio split -> function applied to that split's dataset.
      sizes: known example counts of transformed splits (e.g. subset size).
    """
    super().__init__(tfds_name=tfds_name, splits=dict(splits))
    self._transforms = dict(transforms or {})
    self._sizes = dict(sizes or {})

  def get_dataset(self, split=None, shuffle=True, seed=None, shard_info=None,
                  **kwargs) -> tf.data.Dataset:
    transform = self._transforms.get(split)
    if transform is None:
      return super().get_dataset(split, shuffle=shuffle, seed=seed,
                                 shard_info=shard_info, **kwargs)
    # Transform the whole split, then shard, so that e.g. a fixed subset is
    # the same however many hosts or cache workers read it.
    ds = transform(super().get_dataset(split, shuffle=False, seed=None,
                                       shard_info=None, **kwargs))
    if shard_info is not None and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds

  def num_input_examples(self, split: str) -> Optional[int]:
    if split in self._sizes:
      return self._sizes[split]
    if split in self._transforms:
      return None
    try:
      return super().num_input_examples(split)
    except (KeyError, ValueError, AttributeError):
      return None  # TFDS metadata not available (e.g. under mock data).


def fixed_subset(num_examples: int, seed: int) -> SplitTransform:
  """A transform keeping `num_examples` examples drawn with a fixed seed.

  The chosen positions depend only on the seed and the split size, so the
  subset is the same in every run and on every machine. The subset is cached
  in memory so that later epochs do not re-read the full split.

  Args:
    num_examples: subset size (all examples if the split is smaller).
    seed: numpy seed of the draw.

  Returns:
    dataset -> dataset of at most `num_examples` examples, in original order.
  """

  def transform(ds: tf.data.Dataset) -> tf.data.Dataset:
    total = int(ds.cardinality().numpy())
    if total < 0:  # Unknown or infinite cardinality: count once.
      total = int(ds.reduce(np.int64(0), lambda n, _: n + 1).numpy())
    rng = np.random.RandomState(seed)
    chosen = np.sort(rng.permutation(total)[:num_examples]).astype(np.int64)
    chosen = tf.constant(chosen)
    ds = ds.enumerate().filter(_plain(
        lambda i, _: tf.reduce_any(tf.equal(i, chosen))))
    return ds.map(_plain(lambda _, x: x)).cache()

  return transform


def filter_by(predicate: Callable[[dict], tf.Tensor]) -> SplitTransform:
  """A transform keeping examples where `predicate(example)` is True."""
  return lambda ds: ds.filter(_plain(predicate))
