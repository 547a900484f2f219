"""`_examples` tasks: the same task, plus decoded examples for TensorBoard.

The prompt-tuning code registers `<task>_examples` twins whose evaluation
also writes a random sample of (input, target, prediction) texts, and a
sample of the wrong ones, to TensorBoard's text tab. Here the twin is the
very same task (same data, postprocessor and numeric metrics, so any
evaluator scores it unchanged) carrying an `ExamplesSpec` (as the task
attribute `text_examples`, also returned by `examples_spec(name)`); an
evaluator that finds one calls `text_examples(...)` and writes the returned
markdown strings as text summaries.
"""
import dataclasses
import random
from typing import Any, Dict, List, Optional, Sequence

import seqio

from tasks.postprocessors import as_text

SUFFIX = "_examples"
ATTRIBUTE = "text_examples"


@dataclasses.dataclass(frozen=True)
class ExamplesSpec:
  """What an `_examples` task writes to TensorBoard.

  Attributes:
    title: the tag prefix ("rte" -> "rte samples", "rte negative samples").
    num_examples: how many examples per sample (-1: all).
    find_negative: also sample among the wrong predictions.
    qa: show question / answers / context (QA tasks) instead of input /
      target.
    seed: the sampling seed (None: a fresh sample each evaluation).
  """
  title: str
  num_examples: int = 8
  find_negative: bool = True
  qa: bool = False
  seed: Optional[int] = None


def examples_spec(task_name: str) -> Optional[ExamplesSpec]:
  """The `ExamplesSpec` of a registered task, or None for ordinary tasks."""
  task = seqio.get_mixture_or_task(task_name)
  return getattr(task, ATTRIBUTE, None)


def mark(task: seqio.Task, spec: ExamplesSpec) -> seqio.Task:
  """Attaches `spec` to `task` (returns the task)."""
  setattr(task, ATTRIBUTE, spec)
  return task


def _clean(value: Any) -> str:
  return as_text(value).replace("|", "\\|").replace("\n", " ")


def _markdown(spec: ExamplesSpec, rows: List[Dict[str, Any]]) -> str:
  if spec.qa:
    lines = ["| question | answers | prediction | context |",
             "|---|---|---|---|"]
    for r in rows:
      answers = "; ".join(sorted({as_text(a) for a in r["answers"]}))
      lines.append(f"| {_clean(r['question'])} | {_clean(answers)} | "
                   f"{_clean(r['prediction'])} | {_clean(r['context'])} |")
  else:
    lines = ["| input | target | prediction |", "|---|---|---|"]
    for r in rows:
      lines.append(f"| {_clean(r['inputs'])} | {_clean(r['target'])} | "
                   f"{_clean(r['prediction'])} |")
  return "\n".join(lines)


def _sample(rng: random.Random, n: int, rows: List[Any]) -> List[Any]:
  if n < 0 or n >= len(rows):
    return list(rows)
  return [rows[i] for i in sorted(rng.sample(range(len(rows)), n))]


def text_examples(spec: ExamplesSpec,
                  raw_examples: Sequence[Dict[str, Any]],
                  prediction_texts: Sequence[str],
                  targets: Sequence[Any],
                  predictions: Sequence[Any]) -> Dict[str, str]:
  """Markdown samples of decoded examples, by TensorBoard tag.

  Args:
    spec: the task's `ExamplesSpec`.
    raw_examples: the evaluated examples (numpy, with "inputs_pretokenized"
      and "targets_pretokenized"; QA examples also "question", "context",
      "answers").
    prediction_texts: the decoded model outputs.
    targets: the postprocessed targets.
    predictions: the postprocessed predictions (a prediction is "wrong" when
      it differs from its target, as the prompt-tuning code judges it).

  Returns:
    {"<title> samples": markdown, "<title> negative samples": markdown}.
  """
  rows = []
  for ex, text in zip(raw_examples, prediction_texts):
    row = {"inputs": ex.get("inputs_pretokenized", b""),
           "target": ex.get("targets_pretokenized", b""), "prediction": text}
    if spec.qa:
      row.update(question=ex.get("question", b""),
                 context=ex.get("context", b""),
                 answers=list(ex.get("answers", [])))
    rows.append(row)
  rng = random.Random(spec.seed)
  out = {f"{spec.title} samples":
             _markdown(spec, _sample(rng, spec.num_examples, rows))}
  if spec.find_negative:
    wrong = [r for r, t, p in zip(rows, targets, predictions)
             if _differs(t, p)]
    out[f"{spec.title} negative samples"] = _markdown(
        spec, _sample(rng, spec.num_examples, wrong))
  return out


def _differs(target: Any, prediction: Any) -> bool:
  try:
    return bool(target != prediction)
  except ValueError:  # numpy arrays
    return True
