"""Per-task best prompts of a multi-task run.

Each member task is evaluated with its own prompt (`Evaluator(prompt_rows=...)`),
so each task has its own best step. After every evaluation, a task whose metric
(`TrainConfig.best_metric`, else its first decoded metric, else its loss) beat its
recorded best keeps the prompt it has now:

  MODEL_DIR/best/<task>/encoder.prompt.prompt.npy   [P, H]  (+ best.json)
  MODEL_DIR/best/encoder.prompt.prompts.npy         [K, P, H]  row k = task k's
                                                    best prompt (+ best.json)

The top-level bank mixes steps (each row from its task's best step) and is what
`prompt_tuning.infer` serves from the MODEL_DIR by default; its best.json has the
mean of the per-task best values and, under `tasks`, each task's record.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import jax
import numpy as np

from prompt_tuning.run_dir import layout
from prompt_tuning.run_dir import train_state as ckpt
from prompt_tuning.training import evaluation

TASK_EXPORT = "encoder.prompt.prompt"  # one task's row, as a prompt-tuning export


def _mode(metric: str, best_mode: Optional[str]) -> str:
  return best_mode or ("min" if metric in ("loss", "z_loss") else "max")


def _beats(previous: Optional[Mapping[str, Any]], metric: str, value: float,
           mode: str) -> bool:
  if previous is None or previous.get("metric") != metric:
    return True
  return value > previous["value"] if mode == "max" else value < previous["value"]


def update(step: int, results: Mapping[str, evaluation.TaskResult],
           names: Sequence[str], bank_name: str,
           exported: Callable[[], Dict[str, np.ndarray]], model_dir: str,
           best_metric: Optional[str], best_mode: Optional[str]
           ) -> Optional[Dict[str, Any]]:
  """Records the tasks that improved and rewrites `best/`; returns the run's record.

  Args:
    step: the evaluated step.
    results: task → its evaluation (every task evaluated with its own row).
    names: the task of each bank row.
    bank_name: the exported bank's array name (`encoder.prompt.prompts`).
    exported: the current exports (`{bank_name: [K, P, H]}`); called once on every
      process.
    model_dir: MODEL_DIR.
    best_metric / best_mode: `TrainConfig.best_metric` / `best_mode`.
  """
  # Every process gathers the current bank at every evaluation (a collective when it
  # is sharded over hosts), whatever it reads from disk below.
  current = np.asarray(exported()[bank_name])
  saved = layout.read_task_bests(model_dir)
  rows = {t: v["arrays"][TASK_EXPORT] for t, v in saved.items()
          if t in names and TASK_EXPORT in v["arrays"]}
  records = {t: saved[t]["record"] for t in rows}
  improved = []
  for task, result in results.items():
    chosen = evaluation.select_metric({task: result}, best_metric)
    if task not in names or chosen is None:
      continue
    metric, value = chosen
    mode = _mode(metric, best_mode)
    if _beats(records.get(task), metric, value, mode):
      improved.append(task)
      records[task] = {"step": step, "metric": metric, "value": value, "mode": mode}
  if not improved:
    return layout.read_best_record(model_dir)
  for task in improved:
    rows[task] = current[list(names).index(task)]
  # A task never evaluated (no split) keeps its current row in the bank.
  bank = np.stack([rows.get(t, current[k]) for k, t in enumerate(names)])
  values = [r["value"] for r in records.values()]
  metrics = {r["metric"] for r in records.values()}
  record = {"step": step, "metric": metrics.pop() if len(metrics) == 1 else "mixed",
            "value": float(np.mean(values)),
            "mode": next(iter(records.values()))["mode"], "tasks": records}
  if jax.process_index() == 0:
    ckpt.export_task_bests(
        model_dir, {bank_name: bank}, record,
        {t: ({TASK_EXPORT: rows[t]}, records[t]) for t in rows})
  return record
