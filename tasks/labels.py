"""Label strings and textual task prefixes of the registered tasks.

One place to ask "what may this task output?" (for class-label prompt
initialization and rank classification) and "which leading word names the
task in its inputs?" (dropped by the `taskless_` variants).
"""
from typing import Dict, List, Optional, Sequence

import seqio

# task name -> label strings (classification tasks only).
_LABELS: Dict[str, tuple] = {}
# task name -> the leading word of its inputs, e.g. "rte", "wsc:", "summarize:"
# (tasks without one, and all taskless_ tasks, are absent).
TASK_PREFIXES: Dict[str, str] = {}


def register_labels(task_name: str,
                    label_strings: Optional[Sequence[str]] = None,
                    prefix: Optional[str] = None) -> None:
  """Records a task's label strings and/or task prefix.

  Args:
    task_name: the seqio task name.
    label_strings: the strings the task's targets take, by class id.
    prefix: the leading word of the task's inputs.
  """
  if label_strings is not None:
    _LABELS[task_name] = tuple(label_strings)
  if prefix:
    TASK_PREFIXES[task_name] = prefix


def _check_known(name: str) -> None:
  if name in _LABELS or name in TASK_PREFIXES:
    return
  if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
    return
  raise ValueError(
      f"Unknown task or mixture {name!r}. Run `python -m tasks.list` for the "
      "registered names; `import tasks` registers them.")


def get_label_strings(task_name: str) -> Optional[List[str]]:
  """Label strings of a classification task or mixture, else None.

  Args:
    task_name: a registered task or mixture name.

  Returns:
    The labels by class id (e.g. ["entailment", "not_entailment"] for
    `super_glue_rte_v102`), or None for generation/QA tasks. A mixture has
    labels when all its tasks share the same labels.

  Raises:
    ValueError: the name is registered nowhere.
  """
  _check_known(task_name)
  if task_name in _LABELS:
    return list(_LABELS[task_name])
  if task_name in seqio.MixtureRegistry.names():
    mixture = seqio.get_mixture_or_task(task_name)
    found = {_LABELS.get(task.name) for task in mixture.tasks}
    if len(found) == 1 and None not in found:
      return list(found.pop())
  return None


def get_task_prefix(task_name: str) -> Optional[str]:
  """The leading word naming the task in its inputs ("rte"), or None."""
  _check_known(task_name)
  return TASK_PREFIXES.get(task_name)
