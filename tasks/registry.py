"""Helpers that register a task together with its `taskless_` twin.

Every registration records label strings and the task prefix (labels.py),
uses the shared lazy vocabulary (vocab.py) and ends with T5's token
pipeline: tokenize -> cache placeholder -> append EOS (no packing here).
Registering a name again replaces the old provider, so `tasks.register_all()`
can be re-run (e.g. after a test reset seqio's registries).
"""
import logging
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple, Union

import seqio

from tasks import labels as labels_lib
from tasks import preprocessors as prep
from tasks import vocab

TASKLESS = "taskless_"
_OURS = set()  # ids of the providers this package registered.

TOKEN_PREPROCESSORS = (
    seqio.preprocessors.tokenize,
    seqio.CacheDatasetPlaceholder(),
    seqio.preprocessors.append_eos_after_trim,
)


def _replace(registry, name: str) -> None:
  if name not in registry.names():
    return
  old = registry.get(name)
  if id(old) not in _OURS:
    logging.warning(
        "Replacing %r registered elsewhere (e.g. by the t5 package) with the "
        "`tasks` definition; import only one of them.", name)
  registry.remove(name)


def add_task(name: str,
             source: seqio.DataSource,
             text_preprocessors: Sequence[Callable[..., Any]],
             metric_fns: Sequence[Callable[..., Any]] = (),
             postprocess_fn: Optional[Callable[..., Any]] = None,
             label_strings: Optional[Sequence[str]] = None,
             prefix: Optional[str] = None,
             taskless: bool = True) -> seqio.Task:
  """Registers `name` and, if `taskless`, `taskless_<name>`.

  Args:
    name: the task name (T5's where T5 has one).
    source: where raw examples come from.
    text_preprocessors: raw example -> {"inputs", "targets", ...} text.
    metric_fns: `fn(targets, predictions) -> dict` metrics.
    postprocess_fn: decoded text -> metric input (see postprocessors.py).
    label_strings: the target strings of a classification task, by class id.
    prefix: the leading word of the inputs that names the task; the taskless
      twin drops it. None when inputs start with a field word ("question:"),
      in which case the taskless twin has the very same format.
    taskless: also register the `taskless_` twin.

  Returns:
    The (non-taskless) task.
  """
  variants = [(name, list(text_preprocessors), prefix)]
  if taskless:
    extra = [prep.remove_leading_word] if prefix else []
    variants.append((TASKLESS + name, list(text_preprocessors) + extra, None))
  first = None
  for task_name, text_steps, task_prefix in variants:
    _replace(seqio.TaskRegistry, task_name)
    task = seqio.Task(
        task_name,
        source=source,
        preprocessors=text_steps + list(TOKEN_PREPROCESSORS),
        output_features=vocab.OUTPUT_FEATURES,
        postprocess_fn=postprocess_fn,
        metric_fns=list(metric_fns))
    seqio.TaskRegistry.add_provider(task_name, task)
    _OURS.add(id(task))
    labels_lib.register_labels(task_name, label_strings, task_prefix)
    if first is None:
      first = task
  return first


Rate = Union[float, Callable[[seqio.Task], float]]


def add_mixture(name: str,
                tasks: Iterable[Union[str, Tuple[str, Rate]]],
                default_rate: Optional[Rate] = None,
                taskless: bool = True) -> seqio.Mixture:
  """Registers a mixture and, if `taskless`, its all-taskless twin.

  Args:
    name: the mixture name.
    tasks: task names, or (task name, rate) pairs.
    default_rate: rate of tasks given without one.
    taskless: also register `taskless_<name>` over the taskless tasks.

  Returns:
    The (non-taskless) mixture.
  """
  tasks = list(tasks)
  variants = [(name, tasks)]
  if taskless:
    variants.append((TASKLESS + name, [
        (TASKLESS + t[0], t[1]) if isinstance(t, tuple) else TASKLESS + t
        for t in tasks
    ]))
  first = None
  for mixture_name, members in variants:
    _replace(seqio.MixtureRegistry, mixture_name)
    mixture = seqio.Mixture(mixture_name, members, default_rate=default_rate)
    seqio.MixtureRegistry.add_provider(mixture_name, mixture)
    _OURS.add(id(mixture))
    if first is None:
      first = mixture
  return first
