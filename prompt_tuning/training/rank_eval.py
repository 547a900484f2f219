"""Rank classification as an evaluation metric (T5X / seqio's `rank_classification`).

Instead of decoding, each example scores every valid label of its task (teacher-
forced log-likelihood of the label string + EOS, `inference.ranking.rank_classify`
with the chosen length normalization) and predicts the best one. The ranked label
goes through the task's postprocessor like a decoded answer, and is reported as

  rank_accuracy     the share of examples whose ranked label, postprocessed,
                    equals the postprocessed target (select it with
                    `BEST_METRIC = 'rank_accuracy'`)
  rank/<metric>     each of the task's own metrics on the ranked predictions

The entry point resolves each task's labels (`tasks.get_label_strings`) and hands
them to the `Evaluator` (`rank_labels=`); this module knows no task registry.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from prompt_tuning.inference import ranking

ACCURACY = "rank_accuracy"
PREFIX = "rank/"


@dataclasses.dataclass(frozen=True)
class RankSettings:
  """Which labels each task ranks, and how multi-token labels are compared.

  Attributes:
    labels: task name → its label strings (class id order).
    normalization: 'sum' | 'mean' | 'length_penalty' (`inference.ranking`).
    alpha: the exponent of 'length_penalty'.
  """
  labels: Mapping[str, Sequence[str]]
  normalization: str = "sum"
  alpha: float = 0.6

  def __post_init__(self):
    if self.normalization not in ranking.NORMALIZATIONS:
      raise ValueError(f"Unknown rank_normalization {self.normalization!r}; choose "
                       f"one of {ranking.NORMALIZATIONS}.")
    for task, strings in self.labels.items():
      if isinstance(strings, str) or len(strings) < 2 or not all(
          isinstance(s, str) for s in strings):
        raise ValueError(f"Rank classification of {task!r} needs at least two label "
                         f"strings; got {strings!r}.")


def label_tokens(vocabulary: Any, labels: Sequence[str], eos_id: int = 1
                 ) -> np.ndarray:
  """[K, L] int32: each label's ids + EOS (as seqio appends to targets), 0-padded."""
  encoded = [list(vocabulary.encode(s)) + [eos_id] for s in labels]
  out = np.zeros((len(encoded), max(len(e) for e in encoded)), np.int32)
  for k, ids in enumerate(encoded):
    out[k, :len(ids)] = ids
  return out


def rank_batch(model, params, tokens, labels: np.ndarray, settings: RankSettings,
               prompt_index=None) -> Any:
  """Best label index [B] of one batch (a device array)."""
  best, _ = ranking.rank_classify(model, params, tokens, labels,
                                  prompt_index=prompt_index,
                                  normalization=settings.normalization,
                                  alpha=settings.alpha)
  return best


def metrics(best: Sequence[int], labels: Sequence[str], raw: Sequence[Mapping],
            targets: Sequence[Any], postprocess: Callable[..., Any],
            metric_fns: Sequence[Callable], value: Callable[[Any], Any]
            ) -> Dict[str, Any]:
  """`rank_accuracy` and `rank/<metric>` of the ranked predictions.

  Args:
    best: per example, the index of its ranked label.
    labels: the task's label strings.
    raw: the examples (the postprocessor's `example=`).
    targets: the postprocessed targets.
    postprocess: the task's `postprocess_fn`.
    metric_fns: the task's prediction metrics `(targets, predictions) -> dict`.
    value: seqio metric value → plain python.
  """
  predictions: List[Any] = [postprocess(labels[int(b)], example=ex, is_target=False)
                            for b, ex in zip(best, raw)]
  hits = [bool(np.all(p == t)) for p, t in zip(predictions, targets)]
  out: Dict[str, Any] = {ACCURACY: float(np.mean(hits)) if hits else 0.0}
  for fn in metric_fns:
    out.update({PREFIX + k: value(v) for k, v in fn(targets, predictions).items()})
  return out


def settings_or_none(labels: Optional[Mapping[str, Sequence[str]]],
                     normalization: str = "sum", alpha: float = 0.6
                     ) -> Optional[RankSettings]:
  return RankSettings(dict(labels), normalization, alpha) if labels else None
