"""Classification and QA metrics with T5's definitions (scores in percent).

Every metric is `fn(targets, predictions) -> {name: value}` over postprocessed
targets/predictions (see postprocessors.py) and declares the keys it returns
in `fn.metric_names` (used by `python -m tasks.list`). Predictions that are
not a valid label arrive as class id -1 and are always counted wrong; the
`invalid_predictions` metric counts them. No metric raises on bad predictions.
"""
import collections
import re
import string
import warnings
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import scipy.stats
import sklearn.metrics

from tasks.postprocessors import INVALID

MetricFn = Callable[[Sequence[Any], Sequence[Any]], Dict[str, float]]


def returns(*names: str):
  """Decorator recording the metric keys a metric function returns."""

  def wrap(fn):
    fn.metric_names = tuple(names)
    return fn

  return wrap


def _values(items: Sequence[Any]) -> List[Any]:
  """Unwraps {"value": v} dicts (MultiRC, AX-g) into plain values."""
  return [x["value"] if isinstance(x, dict) else x for x in items]


def _check_lengths(targets, predictions):
  if len(targets) != len(predictions):
    raise ValueError(
        f"Got {len(targets)} targets but {len(predictions)} predictions; "
        "each target needs exactly one prediction.")


# ============================== classification ================================
@returns("invalid_predictions")
def invalid_predictions(targets, predictions) -> Dict[str, float]:
  """Number of predictions that were not one of the task's label strings."""
  del targets
  return {"invalid_predictions": int(
      sum(1 for p in _values(predictions) if p == INVALID))}


@returns("accuracy")
def accuracy(targets, predictions) -> Dict[str, float]:
  """100 * fraction of predictions equal to their target (-1 never is)."""
  _check_lengths(targets, predictions)
  t, p = _values(targets), _values(predictions)
  if not t:
    return {"accuracy": 0.0}
  return {"accuracy": 100.0 * float(np.mean([a == b for a, b in zip(t, p)]))}


def _binary_with_invalid_as_wrong(targets, predictions):
  """Replaces every prediction outside {0, 1} by the wrong class (T5's)."""
  t = np.asarray(_values(targets), dtype=np.int64)
  p = np.asarray(_values(predictions), dtype=np.int64).copy()
  invalid = (p != 0) & (p != 1)
  p[invalid] = 1 - t[invalid]
  return t, p


@returns("f1")
def f1_with_invalid(targets, predictions) -> Dict[str, float]:
  """Binary F1 (positive class 1) in percent; invalid predictions are wrong."""
  _check_lengths(targets, predictions)
  t, p = _binary_with_invalid_as_wrong(targets, predictions)
  return {"f1": 100.0 * sklearn.metrics.f1_score(t, p, zero_division=0.0)}


def mean_multiclass_f1(num_classes: int) -> MetricFn:
  """Macro-averaged F1 over classes 0..num_classes-1 (CB: 3), in percent.

  An invalid prediction (-1) belongs to no class: a false negative for the
  true class. A class with no true and no predicted examples scores 0 (as
  sklearn and T5 do).
  """
  name = f"mean_{num_classes}class_f1"

  @returns(name)
  def fn(targets, predictions):
    _check_lengths(targets, predictions)
    score = sklearn.metrics.fbeta_score(
        _values(targets), _values(predictions), beta=1,
        labels=list(range(num_classes)), average="macro", zero_division=0.0)
    return {name: 100.0 * float(score)}

  fn.__name__ = name
  return fn


@returns("matthews_corrcoef")
def matthews_corrcoef(targets, predictions) -> Dict[str, float]:
  """Matthews correlation x 100 (CoLA, AX-b), as T5 computes it.

  T5 calls sklearn's `matthews_corrcoef` on the class ids as they are, so an
  invalid prediction (-1) is a class of its own (never equal to a target),
  not flipped to the other class as F1 does. No predictions -> 0.
  """
  _check_lengths(targets, predictions)
  t = np.asarray(_values(targets), dtype=np.int64)
  p = np.asarray(_values(predictions), dtype=np.int64)
  if len(t) == 0:
    return {"matthews_corrcoef": 0.0}
  return {"matthews_corrcoef":
              100.0 * float(sklearn.metrics.matthews_corrcoef(t, p))}


def _correlation(name: str, fn):
  """Wraps a scipy correlation (T5's STS-B metrics) as a percent metric."""

  @returns(name)
  def metric(targets, predictions) -> Dict[str, float]:
    _check_lengths(targets, predictions)
    t = np.asarray(_values(targets), dtype=np.float64)
    p = np.asarray(_values(predictions), dtype=np.float64)
    if len(t) < 2:
      return {name: 0.0}  # scipy raises below two points.
    with np.errstate(all="ignore"), warnings.catch_warnings():
      # Constant inputs give nan (as in T5) with a warning; keep it quiet.
      warnings.simplefilter("ignore")
      return {name: 100.0 * float(fn(t, p)[0])}

  metric.__name__ = name
  return metric


pearson_corrcoef = _correlation("pearson_corrcoef", scipy.stats.pearsonr)
spearman_corrcoef = _correlation("spearman_corrcoef", scipy.stats.spearmanr)


@returns("gender_parity")
def gender_parity(targets, predictions) -> Dict[str, float]:
  """AX-g: 100 * fraction of male/female pairs predicted identically.

  Targets carry {"group": pair id}; a pair is the (usually two) examples
  sharing a group. Groups with a single example are ignored.
  """
  _check_lengths(targets, predictions)
  groups = collections.defaultdict(list)
  for target, prediction in zip(targets, _values(predictions)):
    groups[target["group"]].append(prediction)
  pairs = [preds for preds in groups.values() if len(preds) > 1]
  if not pairs:
    return {"gender_parity": 0.0}
  same = [len(set(preds)) == 1 for preds in pairs]
  return {"gender_parity": 100.0 * float(np.mean(same))}


@returns("f1")
def multirc_f1_over_all_answers(targets, predictions) -> Dict[str, float]:
  """MultiRC F1a: binary F1 over every answer option."""
  return f1_with_invalid(_values(targets), _values(predictions))


@returns("exact_match")
def multirc_exact_match(targets, predictions) -> Dict[str, float]:
  """MultiRC EM: mean over questions of "every answer option right"."""
  _check_lengths(targets, predictions)
  by_question = collections.defaultdict(list)
  for target, prediction in zip(targets, _values(predictions)):
    by_question[target["group"]].append(target["value"] == prediction)
  if not by_question:
    return {"exact_match": 0.0}
  return {"exact_match": 100.0 * float(
      np.mean([all(hits) for hits in by_question.values()]))}


# ==================================== QA ======================================
def normalize_squad(text: str) -> str:
  """SQuAD v1.1's answer normalization (T5's): lowercase, drop punctuation,
  drop the articles a/an/the, collapse whitespace."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in _PUNCTUATION)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


_PUNCTUATION = frozenset(string.punctuation)


def _token_f1(target: str, prediction: str) -> float:
  prediction_tokens, target_tokens = prediction.split(), target.split()
  common = (collections.Counter(prediction_tokens) &
            collections.Counter(target_tokens))
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision = num_same / len(prediction_tokens)
  recall = num_same / len(target_tokens)
  return 2 * precision * recall / (precision + recall)


@returns("em", "f1")
def squad(targets: Sequence[Sequence[str]],
          predictions: Sequence[str]) -> Dict[str, float]:
  """SQuAD EM and token F1, each the max over the reference answers.

  Args:
    targets: per question, the list of reference answers (may be empty: the
      question then scores 0).
    predictions: per question, the predicted answer.

  Returns:
    {"em": percent, "f1": percent}.
  """
  _check_lengths(targets, predictions)
  if not targets:
    return {"em": 0.0, "f1": 0.0}
  em, f1 = [], []
  for answers, prediction in zip(targets, predictions):
    answers = [normalize_squad(a) for a in answers]
    prediction = normalize_squad(prediction)
    em.append(max([float(a == prediction) for a in answers], default=0.0))
    f1.append(max([_token_f1(a, prediction) for a in answers], default=0.0))
  return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


def _span_text(context_tokens: List[str], prediction: str) -> str:
  """The context words a "start: i end: j" prediction points at ("" if the
  prediction is not of that form), as T5's `span_squad`."""
  tokens = re.sub(r"\W", " ", prediction).split()
  if len(tokens) < 4:
    return ""
  try:
    start, end = int(tokens[1]), int(tokens[3])
  except ValueError:
    return ""
  return " ".join(context_tokens[start:end + 1])


@returns("em", "f1")
def span_squad(targets, predictions) -> Dict[str, float]:
  """SQuAD EM/F1 of span predictions ("start: 3 end: 6" over the context's
  space tokens), T5's `span_squad`; targets are `span_qa` dicts."""
  _check_lengths(targets, predictions)
  answers = [t["answers"] for t in targets]
  texts = [_span_text(re.sub(r"\W", " ", t["context"]).split(), p)
           for t, p in zip(targets, predictions)]
  return squad(answers, texts)


def _first_per_group(targets, predictions) -> Tuple[List[Any], List[Any]]:
  """Keeps the first (target, prediction) of each target["group"]."""
  seen = set()
  kept_targets, kept_predictions = [], []
  for target, prediction in zip(targets, predictions):
    if target["group"] in seen:
      continue
    seen.add(target["group"])
    kept_targets.append(target["value"])
    kept_predictions.append(prediction["value"] if isinstance(prediction, dict)
                            else prediction)
  return kept_targets, kept_predictions


@returns("em", "f1")
def record(targets, predictions) -> Dict[str, float]:
  """ReCoRD: SQuAD EM/F1 (max over answers), one score per query."""
  _check_lengths(targets, predictions)
  return squad(*_first_per_group(targets, predictions))
