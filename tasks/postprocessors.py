"""Postprocessors: decoded model text (or the example) -> metric inputs.

seqio calls `postprocess_fn(text, example=ex, is_target=False)` on every
prediction and `postprocess_fn(targets_pretokenized, example=ex,
is_target=True)` on every target; `ex` is the numpy example (strings are
bytes). The definitions follow T5's postprocessors; a prediction that is not a
valid label becomes class id `INVALID` (-1), which every metric counts wrong.
"""
from typing import Any, Mapping, Optional, Sequence

import numpy as np

INVALID = -1


def as_text(value: Any) -> str:
  """bytes / numpy bytes / str -> str (UTF-8, undecodable bytes replaced)."""
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  return str(value)


def _as_int(value: Any) -> int:
  return int(np.asarray(value).item())


def string_label_to_class_id(text: Any,
                             label_classes: Sequence[str],
                             example: Optional[Mapping[str, Any]] = None,
                             is_target: bool = False) -> int:
  """Index of `text` in `label_classes`, else `INVALID` (-1).

  The comparison is exact (T5's): "Entailment" or "entailment." are invalid.
  """
  del example, is_target
  text = as_text(text)
  return label_classes.index(text) if text in label_classes else INVALID


def string_to_float(text: Any, example=None, is_target: bool = False,
                    default: float = -1.0) -> float:
  """STS-B: the text as a number (Python's `float`), else `default` (-1).

  T5's rule, including what Python's `float` accepts (" 3.4 ", "1e0",
  "nan").
  """
  del example, is_target
  try:
    return float(as_text(text))
  except ValueError:
    return default


class ClassLabel:
  """Picklable postprocessor mapping label strings to class ids."""

  def __init__(self, label_classes: Sequence[str]):
    self.label_classes = tuple(label_classes)

  def __call__(self, text, example=None, is_target=False) -> int:
    return string_label_to_class_id(text, self.label_classes)

  def __repr__(self):
    return f"ClassLabel({list(self.label_classes)})"


def multirc(text, example=None, is_target=False) -> Mapping[str, Any]:
  """{"value": class id of False/True}; targets also carry the question id
  ("group") so the metric can score each question's answers together."""
  result = {"value": string_label_to_class_id(text, ("False", "True"))}
  if is_target:
    result["group"] = _as_int(example["idx/question"])
  return result


def record(text, example=None, is_target=False) -> Mapping[str, Any]:
  """Prediction -> {"value": text}; target -> {"value": all answers, "group":
  (passage id, query id)} (ReCoRD examples are repeated once per answer)."""
  if is_target:
    return {
        "value": [as_text(a) for a in example["answers"]],
        "group": (_as_int(example["idx/passage"]),
                  _as_int(example["idx/query"])),
    }
  return {"value": as_text(text)}


def qa(text, example=None, is_target=False):
  """Prediction -> text; target -> the list of all reference answers."""
  if is_target:
    return [as_text(a) for a in example["answers"]]
  return as_text(text)


def span_qa(text, example=None, is_target=False):
  """Prediction -> text; target -> {"answers": all answers, "context": the
  (padded) context} for `metrics.span_squad` (T5's `span_qa`)."""
  if is_target:
    return {"answers": [as_text(a) for a in example["answers"]],
            "context": as_text(example["context"])}
  return as_text(text)


_WSC_DETERMINERS = frozenset([
    "a", "an", "few", "her", "his", "each", "every", "many", "much", "my",
    "our", "some", "that", "the", "their", "these", "this", "those", "which",
    "whose", "your"
])


def _wsc_clean(text: str) -> str:
  text = text.strip().lower()
  return " ".join(w for w in text.split(" ") if w not in _WSC_DETERMINERS)


def wsc_simple(text, example=None, is_target=False) -> int:
  """T5's WSC scoring: 1 if the predicted referent names the candidate.

  Target -> the example's label (is the candidate the true referent?).
  Prediction -> 1 when, ignoring case and determiners, the predicted words
  are a subset or superset of the candidate's words (and both or neither are
  possessive), else 0; an empty or determiner-only prediction -> `INVALID`
  (-1), wrong for either label. Accuracy of this against the label is WSC
  accuracy.
  """
  if is_target:
    return _as_int(example["label"])
  prediction = _wsc_clean(as_text(text))
  if not prediction:
    return INVALID  # Empty or determiners only: wrong for either label.
  referent = _wsc_clean(as_text(example["targets_pretokenized"]))
  if ("'" in prediction) != ("'" in referent):
    return 0
  prediction_words = set(prediction.split(" "))
  referent_words = set(referent.split(" "))
  return int(prediction_words.issubset(referent_words) or
             referent_words.issubset(prediction_words))


class GroupedClassLabel:
  """Class id plus, for targets, a pair id for AX-g's gender parity.

  AX-g examples come in male/female pairs with consecutive ids (2k, 2k+1);
  targets get {"value": class id, "group": idx // 2}.
  """

  def __init__(self, label_classes: Sequence[str]):
    self.label_classes = tuple(label_classes)

  def __call__(self, text, example=None, is_target=False):
    result = {"value": string_label_to_class_id(text, self.label_classes)}
    if is_target:
      result["group"] = _as_int(example["idx"]) // 2
    return result


class GroupedText:
  """Text plus, for targets, the inputs text as a group key.

  Table-to-text data repeats an input once per reference; grouping by input
  lets the metric score one prediction per input against all its references.
  """

  def __call__(self, text, example=None, is_target=False):
    if is_target:
      return {"value": as_text(text),
              "group": as_text(example["inputs_pretokenized"])}
    return as_text(text)

  def __repr__(self):
    return "GroupedText()"
