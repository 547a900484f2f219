"""GSM8K (grade-school math word problems) from TFDS `gsm8k:1.0.0`.

Format (one task, `gsm8k`; no taskless twin, the inputs carry no task word):

  inputs   "Question: <question>\\nAnswer:"
  targets  "<worked solution> #### <final number>"   (TFDS's `answer` field with
           the calculator annotations "<<48/2=24>>" removed)

Splits: train (TFDS train, 7,473 problems) and test (TFDS test, 1,319). GSM8K has no
validation set and none is invented here: evaluating during training needs
`--gin.EVAL_SPLIT="'test'"`, a deliberate choice to look at the test set (without it,
evaluation stops with an error naming the missing split).

Metric: `final_number_accuracy`, the percentage of problems whose final number
(see `final_number`) equals the reference's, compared as exact decimals after
normalisation (1,000 = 1000 = 1000.00); `no_number_predictions` counts generations
without any number.
"""
import decimal
import re
from typing import Optional

import seqio
import tensorflow as tf

from tasks import metrics
from tasks import postprocessors
from tasks import registry
from tasks import sources

TFDS_NAME = "gsm8k:1.0.0"
ANSWER_MARK = "####"
_plain = tf.autograph.experimental.do_not_convert

# A number: optional sign (ASCII or Unicode minus) not glued to a preceding word,
# digit or decimal point; "$" allowed after the sign; digits with thousands commas
# only in groups of three ("1,234,567"), an optional decimal part, or ".5".
_NUMBER = re.compile(
    r"(?<![\w.])([-+\u2212]?)\$?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?![\d])")
# The model may go on to write the next problem; only the first answer counts.
_NEXT_PROBLEM = re.compile(r"\n\s*Question:")


def _to_decimal(sign: str, digits: str) -> decimal.Decimal:
  value = decimal.Decimal(digits.replace(",", ""))
  return -value if sign in ("-", "\u2212") else value


def _canonical(value: decimal.Decimal) -> str:
  """'1000', '3.5', '-2' (no exponent, no trailing zeros)."""
  if value == value.to_integral_value():
    return str(int(value))
  return format(value.normalize(), "f")


def final_number(text: str) -> Optional[str]:
  """The final numeric answer in a generation or a reference, canonicalised.

  Rules: cut the text at a following "Question:" (the model started another
  problem); if it has "####", the first number after the last "####"; otherwise the
  last number in the text. Commas in thousands groups are dropped, signs kept,
  "$" and a trailing "." or "%" ignored, decimals compared exactly (3.50 == 3.5).

  Returns:
    e.g. "1000", "-3", "0.5"; None when there is no number.
  """
  if isinstance(text, bytes):
    text = text.decode("utf-8", "replace")
  text = _NEXT_PROBLEM.split(text, maxsplit=1)[0]
  if ANSWER_MARK in text:
    tail = text.rsplit(ANSWER_MARK, 1)[1]
    found = _NUMBER.search(tail)
    if found:
      return _canonical(_to_decimal(*found.groups()))
  matches = list(_NUMBER.finditer(text))
  if not matches:
    return None
  return _canonical(_to_decimal(*matches[-1].groups()))


def postprocess(text, example=None, is_target=False) -> Optional[str]:
  del example, is_target
  return final_number(postprocessors.as_text(text))


@metrics.returns("final_number_accuracy", "no_number_predictions")
def final_number_accuracy(targets, predictions):
  """Percent of predictions whose final number equals the target's (None never does)."""
  if len(targets) != len(predictions):
    raise ValueError(f"Got {len(targets)} targets but {len(predictions)} predictions.")
  correct = sum(1 for t, p in zip(targets, predictions) if p is not None and t == p)
  return {"final_number_accuracy": 100.0 * correct / max(len(targets), 1),
          "no_number_predictions": sum(1 for p in predictions if p is None)}


def strip_calculator_annotations(text: tf.Tensor) -> tf.Tensor:
  """Removes GSM8K's "<<expression=result>>" calculator annotations."""
  return tf.strings.regex_replace(text, r"<<[^>]*>>", "")


@seqio.map_over_dataset
@_plain
def format_problem(x):
  """TFDS example -> {"inputs": "Question: ...\\nAnswer:", "targets": solution}."""
  return {
      "inputs": tf.strings.join(["Question: ", tf.strings.strip(x["question"]),
                                 "\nAnswer:"]),
      "targets": strip_calculator_annotations(tf.strings.strip(x["answer"])),
  }


def register() -> None:
  registry.add_task(
      "gsm8k",
      source=sources.TransformedTfdsDataSource(
          TFDS_NAME, splits={"train": "train", "test": "test"}),
      text_preprocessors=[format_problem],
      metric_fns=[final_number_accuracy],
      postprocess_fn=postprocess,
      taskless=False)
