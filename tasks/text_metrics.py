"""Generation metrics: corpus BLEU (sacrebleu) and ROUGE (rouge-score).

Targets are either reference strings, or {"value": reference, "group": key}
dicts (see `postprocessors.GroupedText`): examples sharing a group key are
one input with several references, scored once with all of them.
"""
import collections
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from rouge_score import rouge_scorer
import sacrebleu

from tasks.metrics import returns


def group_references(targets: Sequence[Any], predictions: Sequence[str]
                     ) -> Tuple[List[List[str]], List[str]]:
  """Collects the references of each input and one prediction per input.

  Args:
    targets: strings (one reference each) or {"value", "group"} dicts.
    predictions: one string per target.

  Returns:
    (references [num_inputs][num_refs_i], predictions [num_inputs]), in order
    of first appearance; each input keeps the prediction made for its first
    example.
  """
  if len(targets) != len(predictions):
    raise ValueError(f"Got {len(targets)} targets but {len(predictions)} "
                     "predictions; each target needs exactly one prediction.")
  references = collections.OrderedDict()
  first_prediction = {}
  for i, (target, prediction) in enumerate(zip(targets, predictions)):
    key = target["group"] if isinstance(target, dict) else i
    value = target["value"] if isinstance(target, dict) else target
    references.setdefault(key, []).append(value)
    first_prediction.setdefault(key, prediction)
  keys = list(references)
  return [references[k] for k in keys], [first_prediction[k] for k in keys]


def bleu_score(references: Sequence[Sequence[str]], predictions: Sequence[str],
               tokenize: str = "13a") -> float:
  """Corpus BLEU (sacrebleu) with a variable number of references per input.

  Args:
    references: [num_inputs][num_refs_i] reference strings.
    predictions: [num_inputs] hypotheses.
    tokenize: sacrebleu tokenizer; "13a" mirrors mteval-v13a, the script
      behind the official E2E/WebNLG/DART BLEU; T5's own tasks used "intl".

  Returns:
    BLEU in [0, 100] (exponential smoothing, case-sensitive, like T5).
  """
  if not predictions:
    return 0.0
  width = max(len(refs) for refs in references)
  # sacrebleu wants reference *streams*; None fills inputs with fewer refs.
  streams = [[refs[j] if j < len(refs) else None for refs in references]
             for j in range(width)]
  return float(sacrebleu.corpus_bleu(
      list(predictions), streams, smooth_method="exp", smooth_value=0.0,
      force=False, lowercase=False, tokenize=tokenize,
      use_effective_order=False).score)


@returns("bleu")
def bleu(targets, predictions) -> Dict[str, float]:
  """BLEU with all references of each input (table-to-text tasks)."""
  return {"bleu": bleu_score(*group_references(targets, predictions))}


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _split_sentences(summary: str) -> str:
  # T5's sentence split for ROUGE-Lsum: a newline after each " . ".
  return summary.replace(" . ", " .\n")


@returns(*ROUGE_KEYS)
def rouge(targets, predictions) -> Dict[str, float]:
  """ROUGE-1/2/L/Lsum F-measures in percent, averaged over examples.

  Same scorer settings as T5 (rouge-score, no stemming, T5's sentence split
  for Lsum). T5 reports the median of a random bootstrap of this mean; the
  plain mean is reported here so scores are reproducible. With several
  references per input (grouped targets), each input scores its best one.
  """
  references, predictions = group_references(targets, predictions)
  if not predictions:
    return {key: 0.0 for key in ROUGE_KEYS}
  scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS))
  totals = {key: [] for key in ROUGE_KEYS}
  for refs, prediction in zip(references, predictions):
    prediction = _split_sentences(prediction)
    scores = [scorer.score(target=_split_sentences(r), prediction=prediction)
              for r in refs]
    for key in ROUGE_KEYS:
      totals[key].append(max(s[key].fmeasure for s in scores))
  return {key: 100.0 * float(np.mean(totals[key])) for key in ROUGE_KEYS}
