"""One CSV row per sweep run, and means / standard deviations over seeds.

Columns (`COLUMNS`, then one per extra sweep axis before `task`):

  name, model, parameters, method, prompt_length, init, seed, [axes…], task,
  metric, best, best_step, final, final_step, evaluations, train_steps, status,
  model_dir

`best` is the best evaluation of `metric` (max, or min for losses) over the run's
metrics.jsonl, `final` the last one. Missing values are empty cells.
"""
from __future__ import annotations

import csv
import functools
import math
import pathlib
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from prompt_tuning.run_dir import layout
from prompt_tuning.research.sweep import Sweep, SweepRun

LEADING = ["name", "model", "parameters", "method", "prompt_length", "init", "seed"]
TRAILING = ["task", "metric", "best", "best_step", "final", "final_step",
            "evaluations", "train_steps", "status", "model_dir"]
COLUMNS = LEADING + TRAILING
LOWER_IS_BETTER = ("loss", "z_loss")
SKIPPED_METRICS = ("loss", "z_loss", "num_examples", "num_truncated",
                   "invalid_predictions")


def columns(extra_axes: Sequence[str] = ()) -> List[str]:
  return LEADING + list(extra_axes) + TRAILING


@functools.lru_cache(maxsize=None)
def _count(config_items: Tuple[Tuple[str, Any], ...]) -> int:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from prompt_tuning import building  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.config import T5Config  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.t5 import Transformer  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  config = T5Config.from_dict(dict(config_items))
  abstract = nn.unbox(building.abstract_params(Transformer(config)))
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract)))


def count_parameters(model_config) -> int:
  """Parameters of the frozen T5 of a `T5Config` (or its dict)."""
  values = model_config if isinstance(model_config, Mapping) else (
      model_config.to_dict())
  return _count(tuple(sorted(values.items())))


def model_parameters(sweep: Sweep, model: str) -> Optional[int]:
  """The sweep file's `parameters:` for a model, else counted from its gin files."""
  given = sweep.models[model].get("parameters")
  if given:
    return int(given)
  from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
  from prompt_tuning.research.runs import GinRun, binding  # pylint: disable=g-import-not-at-top
  GinRun("eval", sweep.models[model]["gin_files"],
         [binding(k, v) for k, v in sweep.models[model]["bindings"].items()]).parse()
  config = cli.macro("MODEL_CONFIG")
  return count_parameters(config) if config is not None else None


def pick_metric(evaluations: Sequence[Mapping[str, Any]], metric: Optional[str]
                ) -> Optional[str]:
  """`metric`, or the first decoded metric of the evaluations, else 'loss'."""
  if metric:
    return metric
  for row in evaluations:
    for key, value in row.items():
      if key not in ("step", "task", "split", "source") + SKIPPED_METRICS and (
          isinstance(value, (int, float))):
        return key
  return "loss" if evaluations else None


def best_and_final(evaluations: Sequence[Mapping[str, Any]], metric: str
                   ) -> Dict[str, Any]:
  """best / best_step / final / final_step / evaluations of one metric."""
  points = [(int(r.get("step", 0)), float(r[metric])) for r in evaluations
            if isinstance(r.get(metric), (int, float))]
  if not points:
    return {"best": None, "best_step": None, "final": None, "final_step": None,
            "evaluations": 0}
  if metric in LOWER_IS_BETTER:  # the earliest step wins ties
    step, value = min(points, key=lambda p: (p[1], p[0]))
  else:
    step, value = max(points, key=lambda p: (p[1], -p[0]))
  final_step, final = max(points, key=lambda p: p[0])
  return {"best": value, "best_step": step, "final": final, "final_step": final_step,
          "evaluations": len(points)}


def row_for(sweep: Sweep, run: SweepRun, parameters: Optional[int] = None,
            train_steps: Optional[int] = None) -> Dict[str, Any]:
  task = sweep.task_of(run)
  evaluations = layout.evaluations(run.model_dir, task)
  metric = pick_metric(evaluations, sweep.metric)
  row: Dict[str, Any] = {
      "name": run.name, "model": run.model, "parameters": parameters,
      "method": run.method, "prompt_length": run.prompt_length, "init": run.init,
      "seed": run.seed}
  row.update(dict(run.extra))
  row.update({"task": task, "metric": metric})
  row.update(best_and_final(evaluations, metric) if metric else
             best_and_final([], "loss"))
  row.update({"train_steps": train_steps,
              "status": sweep.status(run, train_steps),
              "model_dir": str(run.model_dir)})
  return row


def collect(sweep: Sweep) -> List[Dict[str, Any]]:
  """One row per run of the sweep (finished or not; see `status`)."""
  sizes = {m: model_parameters(sweep, m) for m in {r.model for r in sweep.runs}}
  rows = []
  for run in sweep.runs:
    steps = sweep.train_steps(run) if run.trains else None
    rows.append(row_for(sweep, run, sizes[run.model], steps))
  return rows


# ------------------------------------------------------------------------------------
# CSV in and out.
# ------------------------------------------------------------------------------------


def write_csv(rows: Iterable[Mapping[str, Any]], path: str,
              fieldnames: Optional[Sequence[str]] = None) -> pathlib.Path:
  rows = list(rows)
  if fieldnames is None:
    fieldnames = []
    for row in rows:
      fieldnames += [k for k in row if k not in fieldnames]
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: "" if row.get(k) is None else row.get(k)
                       for k in fieldnames})
  return path


def _parse(value: str) -> Any:
  if value == "":
    return None
  for cast in (int, float):
    try:
      return cast(value)
    except ValueError:
      pass
  return value


def read_csv(path: str) -> List[Dict[str, Any]]:
  """Rows with numbers parsed back (empty cells → None)."""
  with open(path, newline="") as f:
    return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


# ------------------------------------------------------------------------------------
# Aggregation over seeds.
# ------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
  """Mean and sample standard deviation (0 for one value)."""
  values = [float(v) for v in values]
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, 0.0
  var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
  return mean, math.sqrt(var)


def aggregate(rows: Iterable[Mapping[str, Any]], keys: Sequence[str],
              value: str = "best") -> List[Dict[str, Any]]:
  """Groups rows by `keys`: `{keys…, mean, std, n}` over rows with a value."""
  groups: Dict[Tuple, List[float]] = {}
  for row in rows:
    if row.get(value) is None:
      continue
    groups.setdefault(tuple(row.get(k) for k in keys), []).append(float(row[value]))
  out = []
  for key, values in groups.items():
    mean, std = mean_std(values)
    out.append(dict(zip(keys, key), mean=mean, std=std, n=len(values)))
  return out
