"""Zero-shot domain transfer: train on a source task, evaluate on target tasks.

The paper's Tables 1 and 2 (Lester et al. 2021, section 6): model tuning and prompt
tuning trained on SQuAD (or QQP / MRPC) are evaluated, without further training, on
out-of-domain sets; rows are target datasets, columns model tuning, prompt tuning
and their difference Δ = prompt − model.

  plan = Plan(source=…, targets=[…], model_gin_files=[…], output_dir=…)
  runs = training_runs(plan)              # SweepRuns (one per method x seed)
  rows = evaluate_targets(plan, runs)     # one row per run x target task
  table = transfer_table(rows, plan)      # one row per target, mean ± std over seeds
  print(format_markdown(table, plan.metrics))
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from prompt_tuning.research import collect
from prompt_tuning.research import eval_runs as evaluate_lib
from prompt_tuning.research import sweep as sweep_lib

METHOD_LABELS = {"model_tuning": "Model", "prompt_tuning": "Prompt"}
PRESET_NAMES = ("squad_mrqa", "qqp_mrpc", "mrpc_qqp", "tiny_topic", "tiny_sentiment",
                "tiny_count")


@dataclasses.dataclass(frozen=True)
class Preset:
  source: str
  targets: Tuple[str, ...]
  metrics: Tuple[str, ...]
  domains: Mapping[str, str] = dataclasses.field(default_factory=dict)
  feature_lengths: Optional[Mapping[str, int]] = None


_MRQA_DOMAINS = {"textbook_qa": "Book", "bio_asq": "Bio", "race": "Exam",
                 "relation_extraction": "Wiki", "duo_rc": "Movie", "drop": "Wiki"}
_TINY_DOMAINS = {"source": "in-domain", "new_nouns": "unseen nouns",
                 "new_moods": "unseen mood words", "long": "longer sentences",
                 "all_new": "all three shifts"}


def _tiny(task: str) -> Preset:
  from tasks import tiny_shift  # pylint: disable=g-import-not-at-top
  names = {d: tiny_shift.task_name(task, d) for d in tiny_shift.DOMAINS}
  return Preset(names["source"], (tiny_shift.mixture_name(task),), ("accuracy",),
                {names[d]: label for d, label in _TINY_DOMAINS.items()},
                {"inputs": 20, "targets": 4})


def presets() -> Dict[str, Preset]:
  """Named transfer settings: the paper's three and the tiny model's two."""
  return {
      "squad_mrqa": Preset(
          "squad_v010_allanswers", ("squad_to_mrqa_v100",), ("f1",),
          dict({"squad_v010_allanswers": "Wiki (in-domain)"},
               **{f"mrqa_{n}_v100": d for n, d in _MRQA_DOMAINS.items()}),
          {"inputs": 512, "targets": 32}),
      "qqp_mrpc": Preset("taskless_glue_qqp_v200",
                         ("taskless_glue_qqp_to_mrpc_v200",), ("accuracy", "f1"),
                         {"taskless_glue_qqp_v200": "Quora (in-domain)",
                          "taskless_glue_mrpc_as_qqp_v200": "News"},
                         {"inputs": 512, "targets": 8}),
      "mrpc_qqp": Preset("taskless_glue_mrpc_v200",
                         ("taskless_glue_mrpc_to_qqp_v200",), ("accuracy", "f1"),
                         {"taskless_glue_mrpc_v200": "News (in-domain)",
                          "taskless_glue_qqp_as_mrpc_v200": "Quora"},
                         {"inputs": 512, "targets": 8}),
      "tiny_topic": _tiny("topic"),
      "tiny_sentiment": _tiny("sentiment"),
      "tiny_count": _tiny("count"),
  }


@dataclasses.dataclass
class Plan:
  """Everything a transfer experiment needs."""
  source: str
  targets: Sequence[str]
  model_gin_files: Sequence[str]
  output_dir: str
  metrics: Sequence[str] = ("accuracy",)
  methods: Sequence[str] = ("model_tuning", "prompt_tuning")
  seeds: Sequence[int] = (0,)
  prompt_length: Optional[int] = None
  init: Optional[str] = None
  gin_files: Sequence[str] = ()
  bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  eval_bindings: Sequence[str] = ()
  checkpoint: Any = "latest"
  domains: Mapping[str, str] = dataclasses.field(default_factory=dict)
  model_name: Optional[str] = None  # run directory name; default: the gin's stem

  def model(self) -> str:
    return self.model_name or pathlib.Path(self.model_gin_files[0]).stem


def sweep_of(plan: Plan) -> sweep_lib.Sweep:
  """The training runs of the plan as a sweep (one model, methods x seeds)."""
  grid: Dict[str, Any] = {"model": [plan.model()], "method": list(plan.methods),
                          "seed": list(plan.seeds)}
  if plan.prompt_length is not None:
    grid["prompt_length"] = [plan.prompt_length]
  if plan.init is not None:
    grid["init"] = [plan.init]
  return sweep_lib.expand({
      "output_dir": plan.output_dir, "task": plan.source,
      "gin_files": list(plan.gin_files), "bindings": dict(plan.bindings),
      "models": {plan.model(): list(plan.model_gin_files)}, "grid": grid})


def training_runs(plan: Plan) -> List[sweep_lib.SweepRun]:
  return sweep_of(plan).runs


def train(plan: Plan) -> List[sweep_lib.SweepRun]:
  """Trains every unfinished run in this process (finished ones are skipped)."""
  sweep = sweep_of(plan)
  for run in sweep.runs:
    if sweep.status(run) != "done":
      run.run.run_in_process()
  return sweep.runs


def _cache_path(plan: Plan, run: sweep_lib.SweepRun, task: str) -> pathlib.Path:
  return (pathlib.Path(plan.output_dir) / "evals" / run.name.replace("/", "__") /
          f"{task}@{plan.checkpoint}.json")


def evaluate_targets(plan: Plan, runs: Sequence[sweep_lib.SweepRun]
                     ) -> List[Dict[str, Any]]:
  """Each run on each target (cached per run x task x checkpoint under
  output_dir/evals/)."""
  rows = []
  for run in runs:
    src = evaluate_lib.source(str(run.model_dir), name=run.name)
    for task in plan.targets:
      cache = _cache_path(plan, run, task)
      if cache.exists():
        found = json.loads(cache.read_text())
      else:
        eval_run = evaluate_lib.eval_run(
            src, task, model_gin_files=plan.model_gin_files,
            gin_files=plan.gin_files, bindings=plan.eval_bindings,
            checkpoint=plan.checkpoint, output_dir=str(cache.parent))
        found = evaluate_lib.result_rows(src, eval_run.run_in_process())
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(found, indent=2) + "\n")
      for row in found:
        rows.append(dict(row, run=run.name, train_method=run.method, seed=run.seed))
  return rows


def transfer_table(rows: Sequence[Mapping[str, Any]], plan: Plan
                   ) -> List[Dict[str, Any]]:
  """One row per target task: per metric, mean/std of each method and Δ."""
  table = []
  targets = list(dict.fromkeys(list(plan.domains) + list(plan.targets) +
                               [r["task"] for r in rows]))
  for task in targets:
    of_task = [r for r in rows if r["task"] == task]
    if not of_task:
      continue
    row: Dict[str, Any] = {"task": task, "domain": plan.domains.get(task, "")}
    for metric in plan.metrics:
      means = {}
      for method in plan.methods:
        values = [r[metric] for r in of_task
                  if r["train_method"] == method and r.get(metric) is not None]
        if values:
          mean, std = collect.mean_std(values)
          row[f"{method}_{metric}"], row[f"{method}_{metric}_std"] = mean, std
          row[f"{method}_{metric}_n"] = len(values)
          means[method] = mean
      if "model_tuning" in means and "prompt_tuning" in means:
        row[f"delta_{metric}"] = means["prompt_tuning"] - means["model_tuning"]
    table.append(row)
  return table


def _cell(row: Mapping[str, Any], key: str) -> str:
  if row.get(key) is None:
    return "–"
  std = row.get(f"{key}_std")
  n = row.get(f"{key}_n", 1)
  return f"{row[key]:.1f}" + (f" ± {std:.1f}" if std is not None and n > 1 else "")


def format_markdown(table: Sequence[Mapping[str, Any]], metrics: Sequence[str],
                    methods: Sequence[str] = ("model_tuning", "prompt_tuning")) -> str:
  """| Dataset | Domain | Model | Prompt | Δ | per metric (paper Tables 1 and 2)."""
  head = ["Dataset", "Domain"]
  for metric in metrics:
    suffix = f" {metric}" if len(metrics) > 1 else ""
    head += [METHOD_LABELS.get(m, m) + suffix for m in methods] + [f"Δ{suffix}"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in table:
    cells = [f"`{row['task']}`", row.get("domain", "")]
    for metric in metrics:
      cells += [_cell(row, f"{m}_{metric}") for m in methods]
      delta = row.get(f"delta_{metric}")
      cells.append("–" if delta is None else f"{delta:+.1f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
