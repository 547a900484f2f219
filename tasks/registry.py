"""Helpers that register a task together with its `taskless_` twin.

Every registration records label strings and the task prefix (labels.py),
uses the shared lazy vocabulary (vocab.py) and ends with T5's token
pipeline: tokenize -> cache placeholder -> append EOS (no packing here).
Registering a name again replaces the old provider, so `tasks.register_all()`
can be re-run (e.g. after a test reset seqio's registries).
"""
import logging
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Tuple, Union

import seqio
from seqio import experimental as seqio_experimental

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


def add_sentinel_twin(name: str, num_sentinels: int = 1) -> str:
  """Registers T5's `<name>_<n>_sentinel` twin of the registered task `name`.

  seqio's `add_task_with_sentinels`: <extra_id_0> (the last vocabulary id)
  appended to the tokenized inputs and put first in the targets; the
  postprocessor strips it from predictions. The suffix goes before
  "_train"/"_eval" ("super_glue_wsc_v102_simple_1_sentinel_train").

  Returns:
    The new task's name.
  """
  suffix = f"_{num_sentinels}_sentinel"
  new_name = name + suffix
  for split_word in ("_train", "_dev", "_test", "_eval", "."):
    if split_word in name:
      i = name.find(split_word)
      new_name = name[:i] + suffix + name[i:]
      break
  _replace(seqio.TaskRegistry, new_name)
  seqio_experimental.add_task_with_sentinels(name, num_sentinels=num_sentinels)
  _OURS.add(id(seqio.TaskRegistry.get(new_name)))
  labels_lib.register_labels(new_name, labels_lib.get_label_strings(name),
                             labels_lib.get_task_prefix(name))
  return new_name


_KEEP = object()


def derive(base_name: str,
           new_name: str,
           token_steps: Sequence[Callable[..., Any]] = (),
           postprocess_fn: Any = _KEEP,
           output_features: Optional[Mapping[str, seqio.Feature]] = None,
           label_strings: Any = _KEEP,
           prefix: Any = _KEEP) -> seqio.Task:
  """Registers `new_name`: the registered task `base_name`, varied.

  Args:
    base_name: a registered task.
    new_name: the new task's name (replaced if registered).
    token_steps: token preprocessors inserted right after tokenization
      (e.g. a task-index token).
    postprocess_fn: a different postprocessor (default: the base's).
    output_features: different features, e.g. another vocabulary.
    label_strings, prefix: recorded for the new name (default: the base's).

  Returns:
    The new task.
  """
  base = seqio.TaskRegistry.get(base_name)
  steps = list(base.preprocessors)
  if token_steps:
    at = steps.index(seqio.preprocessors.tokenize) + 1
    steps[at:at] = list(token_steps)
  _replace(seqio.TaskRegistry, new_name)
  task = seqio.Task(
      new_name,
      source=base.source,
      preprocessors=steps,
      output_features=dict(output_features or base.output_features),
      postprocess_fn=(base.postprocessor if postprocess_fn is _KEEP
                      else postprocess_fn),
      metric_fns=list(base.metric_fns))
  seqio.TaskRegistry.add_provider(new_name, task)
  _OURS.add(id(task))
  labels_lib.register_labels(
      new_name,
      (labels_lib.get_label_strings(base_name) if label_strings is _KEEP
       else label_strings),
      labels_lib.get_task_prefix(base_name) if prefix is _KEEP else prefix)
  return task


def is_ours(name: str) -> bool:
  """Whether `name` (task or mixture) was registered by this package."""
  for reg in (seqio.TaskRegistry, seqio.MixtureRegistry):
    if name in reg.names():
      return id(reg.get(name)) in _OURS
  return False
