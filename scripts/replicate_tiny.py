r"""Tiny-scale replication of the prompt-tuning paper's claims on the bundled model.

  python scripts/replicate_tiny.py --task count --output_dir results/replicate_count \
      --figures docs/figures          # under 30 minutes on 2 idle CPU cores

Everything runs through the entry points (`prompt_tuning.train` / `eval` / `infer`
calls configured by the repo's gin files, printed as commands), on the bundled tiny
LM-adapted T5 (`configs/models/tiny_bundled.gin`) and its generated tasks, without
the task word (tasks/tiny_shift.py, source domain):

  --task count  "the happy man wants the cheese ." -> seven (words before ".");
                the frozen model counts at 93% with the word `count:`
  --task topic  "the happy man wants the cheese ." -> person (the subject's
                category); the frozen model is at 60% with `topic:`
  --task sentiment  -> positive / negative (100% with `sentiment:`)

Experiments (`--experiments`):

  methods   prompt design (the frozen model + the task word) vs prompt tuning vs
            model tuning, plus prefix tuning and LoPA, each with its paper optimizer
            and settings (prompt length 10, class-label init), --seeds seeds; LoPA
            also with prompt tuning's optimizer (Adafactor 0.3)
  inits     class-label vs sampled-vocabulary vs random-uniform initialization
  lengths   prompt lengths (--lengths, default 1, 5, 20, 100), class-label init
  shift     zero-shot domain shift: the methods' prompt- and model-tuning runs
            evaluated on four shifted domains (tasks/tiny_shift.py: unseen nouns,
            unseen mood words, longer sentences, all three), as in Tables 1 and 2
  ensemble  --ensemble prompts (seeds) served as a majority-vote ensemble by
            prompt_tuning.infer vs their mean and best single accuracy
  budget    prompt vs model tuning trained --budget_steps steps (one seed,
            evaluated every --steps): does either get past the frozen skill?
  interpret the nearest vocabulary token of every position of the trained
            length-10 prompts (section 7), for each initializer and seed

Class-label initialization uses the task's labels (count: the number words five …
twelve, bound as CLASS_LABELS). Writes to --output_dir: sweep.yaml (the grid,
rerunnable with scripts/sweep.py), runs/ (every MODEL_DIR), results.csv,
results.json, results.md (the tables, timing and machine load); and
tiny_<task>_{methods,init,prompt_length,budget,shift}.png to --figures. Finished
runs are reused, so an interrupted replication continues.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time
from typing import Any, Dict, List

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import yaml  # pylint: disable=g-import-not-at-top

import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
from prompt_tuning import prompt_files
from prompt_tuning.run_dir import train_state
from prompt_tuning.run_dir import layout
from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
from prompt_tuning import errors  # pylint: disable=g-import-not-at-top
from prompt_tuning.tiny import corpus  # pylint: disable=g-import-not-at-top

from prompt_tuning.research import collect, ensemble_runs  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import eval_runs as evaluate_lib  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import plots, runs as runs_lib  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import transfer  # pylint: disable=g-import-not-at-top

EXPERIMENTS = ("methods", "inits", "lengths", "shift", "ensemble", "budget",
               "interpret")
METHODS = ("prompt_design", "prompt_tuning", "model_tuning", "prefix_tuning", "lopa")
MODEL_GIN = "models/tiny_bundled.gin"
MODEL_NAME = "tiny_bundled"  # as scripts/transfer.py names runs of this gin
COMMON_GIN = "demo/tiny_common.gin"
TASKS = ("count", "topic", "sentiment")
LENGTH, INIT = 10, "class_labels"
# LoPA is also run with prompt tuning's optimizer: at its paper's AdamW 1e-3 it
# barely moves in a few hundred steps on the tiny model.
LOPA_ADAFACTOR = "@optim.adafactor_prompt_tuning()"
LOPA_ADAFACTOR_LABEL = "LoPA, Adafactor 0.3"


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.script_parser("scripts/replicate_tiny.py", __doc__)
  p.add_argument("--task", default="count", choices=TASKS)
  p.add_argument("--output_dir", default=None,
                 help="default results/replicate_<task>")
  p.add_argument("--figures", default=None,
                 help="where the PNGs go (default <output_dir>/figures)")
  p.add_argument("--experiments", default=",".join(EXPERIMENTS))
  p.add_argument("--methods", default=",".join(METHODS),
                 help=f"methods of the 'methods' experiment, among {METHODS}")
  p.add_argument("--steps", type=int, default=300, help="TRAIN_STEPS of every run")
  p.add_argument("--seeds", type=int, default=3, help="seeds per configuration")
  p.add_argument("--ensemble", type=int, default=5, help="prompts in the ensemble")
  p.add_argument("--lengths", default="1,5,20,100")
  p.add_argument("--budget_steps", type=int, default=1500,
                 help="TRAIN_STEPS of the 'budget' experiment")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--max_eval_examples", type=int, default=500,
                 help="validation examples per evaluation (500 = all)")
  p.add_argument("--no_compilation_cache", action="store_true",
                 help="do not keep XLA programs in <output_dir>/xla_cache")
  return p.parse_args(argv)


# ------------------------------------------------------------------------------------
# The grid.
# ------------------------------------------------------------------------------------


def sweep_config(args, experiments: List[str]) -> Dict[str, Any]:
  preset = transfer.presets()[f"tiny_{args.task}"]
  methods = [m for m in args.methods.split(",") if m]
  seeds = list(range(args.seeds))
  grids: List[Dict[str, Any]] = []
  if "methods" in experiments or "shift" in experiments:
    chosen = methods if "methods" in experiments else ["prompt_tuning",
                                                       "model_tuning"]
    for method in chosen:
      grid = {"method": [method], "prompt_length": [LENGTH], "init": [INIT],
              "seed": seeds}
      if method == "prompt_design":
        grid.pop("seed")
      grids.append(grid)
      if method == "lopa" and "methods" in experiments:
        grids.append(dict(grid, OPTIMIZER=[LOPA_ADAFACTOR]))
  if "ensemble" in experiments:
    grids.append({"method": ["prompt_tuning"], "prompt_length": [LENGTH],
                  "init": [INIT], "seed": list(range(args.ensemble))})
  if "inits" in experiments:
    grids.append({"method": ["prompt_tuning"], "prompt_length": [LENGTH],
                  "init": ["class_labels", "sampled_vocab", "random_uniform"],
                  "seed": seeds})
  if "lengths" in experiments:
    grids.append({"method": ["prompt_tuning"], "init": [INIT], "seed": seeds,
                  "prompt_length": [int(x) for x in args.lengths.split(",") if x]})
  if "budget" in experiments:
    grids.append({"method": ["prompt_tuning", "model_tuning"],
                  "prompt_length": [LENGTH], "init": [INIT], "seed": [0],
                  "TRAIN_STEPS": [args.budget_steps]})
  bindings = {}
  if not tasks_lib.get_label_strings(preset.source):  # count: its label words
    bindings["CLASS_LABELS"] = list(corpus.NUMBER_WORDS[5:13])
  return {
      "output_dir": str(pathlib.Path(args.output_dir)),
      "task": preset.source,
      "design_task": preset.source.replace("taskless_", "", 1),
      "metric": "accuracy",
      "gin_files": [COMMON_GIN],
      "bindings": {"TRAIN_STEPS": args.steps, "EVAL_PERIOD": args.steps,
                   "CHECKPOINT_PERIOD": args.steps, "BATCH_SIZE": args.batch_size,
                   "MAX_EVAL_EXAMPLES": args.max_eval_examples,
                   "EVAL_BATCH_SIZE": min(100, args.max_eval_examples),
                   "TrainConfig.eval_batch_size": min(100, args.max_eval_examples),
                   "TrainConfig.log_period": max(1, min(50, args.steps)),
                   **bindings},
      "models": {MODEL_NAME: [MODEL_GIN]},
      "grids": grids,
  }


def _eval_bindings(args) -> List[str]:
  return [runs_lib.binding("MAX_EVAL_EXAMPLES", args.max_eval_examples),
          runs_lib.binding("EVAL_BATCH_SIZE", min(100, args.max_eval_examples))]


def _runs_of(sweep, method, **fields):
  """The main runs (no extra axis, e.g. not the budget runs) of a method."""
  return [r for r in sweep.runs if r.method == method and not r.extra and all(
      getattr(r, k) == v for k, v in fields.items())]


# ------------------------------------------------------------------------------------
# The experiments.
# ------------------------------------------------------------------------------------


TIMING = "timing.jsonl"


def timed(out: pathlib.Path, name: str, fn, *fn_args):
  """Calls `fn`, appending its wall time and the load average to timing.jsonl (so
  the cost of a replication spread over several invocations adds up)."""
  start, load = time.time(), os.getloadavg()
  try:
    return fn(*fn_args)
  finally:
    with open(out / TIMING, "a") as f:
      f.write(json.dumps({"name": name, "seconds": round(time.time() - start, 1),
                          "load_before": load, "load_after": os.getloadavg()}) + "\n")


def timing_summary(out: pathlib.Path) -> Dict[str, Any]:
  """Total seconds and mean 1-minute load over every timed step ever run here."""
  path = out / TIMING
  entries = [json.loads(l) for l in path.read_text().splitlines()] if (
      path.exists()) else []
  if not entries:
    return {"seconds": 0.0, "steps": 0, "mean_load": None}
  loads = [e["load_before"][0] for e in entries] + [e["load_after"][0]
                                                    for e in entries]
  return {"seconds": round(sum(e["seconds"] for e in entries), 1),
          "steps": len(entries), "mean_load": round(sum(loads) / len(loads), 1)}


def train_all(sweep, out: pathlib.Path) -> List[str]:
  """Trains / evaluates every unfinished run; returns the names that failed."""
  failed = []
  todo = [r for r in sweep.runs if sweep.status(r) != "done"]
  print(f"{len(sweep.runs) - len(todo)} of {len(sweep.runs)} runs done; "
        f"{len(todo)} to run.", flush=True)
  for i, run in enumerate(todo, 1):
    print(f"[{i}/{len(todo)}] {run.name}\n  {run.run.command()}", flush=True)
    try:
      timed(out, run.name, run.run.run_in_process)
    except Exception as e:  # pylint: disable=broad-except
      print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
      failed.append(run.name)
  return failed


def no_prompt(args, sweep) -> float:
  """The frozen model on the taskless task (no task word, no prompt)."""
  cache = pathlib.Path(args.output_dir) / "no_prompt.json"
  if not cache.exists():
    rows = evaluate_lib.evaluate(
        [evaluate_lib.source("frozen", name="no_prompt")], [sweep.task],
        output_dir=args.output_dir, model_gin_files=[MODEL_GIN],
        gin_files=[COMMON_GIN], bindings=_eval_bindings(args))
    cache.write_text(json.dumps(rows, indent=2) + "\n")
  return float(json.loads(cache.read_text())[0]["accuracy"])


def shift(args, sweep) -> Dict[str, Any]:
  preset = transfer.presets()[f"tiny_{args.task}"]
  plan = transfer.Plan(
      source=preset.source, targets=preset.targets, model_gin_files=[MODEL_GIN],
      output_dir=args.output_dir, metrics=["accuracy"],
      gin_files=[COMMON_GIN], eval_bindings=_eval_bindings(args),
      checkpoint="latest", domains=dict(preset.domains))
  runs = [r for m in plan.methods for r in _runs_of(sweep, m, prompt_length=(
      LENGTH if m == "prompt_tuning" else None), init=(
          INIT if m == "prompt_tuning" else None)) if r.seed < args.seeds]
  rows = transfer.evaluate_targets(plan, runs)
  table = transfer.transfer_table(rows, plan)
  return {"table": table, "markdown": transfer.format_markdown(table, ["accuracy"]),
          "rows": rows}


def budget(args, sweep) -> Dict[str, Any]:
  """Evaluation curves of the longer prompt- and model-tuning runs."""
  curves = {}
  for run in sweep.runs:
    if dict(run.extra).get("TRAIN_STEPS") == args.budget_steps:
      points = [(int(e["step"]), float(e["accuracy"])) for e in
                layout.evaluations(run.model_dir, sweep.task) if "accuracy" in e]
      curves[run.method] = sorted(points)
  return {"curves": curves}


def interpret(args, sweep) -> List[Dict[str, Any]]:
  """Top-1 cosine neighbor of every position of each length-10 prompt."""
  from prompt_tuning.research import neighbors  # pylint: disable=g-import-not-at-top
  from prompt_tuning.tiny import assets  # pylint: disable=g-import-not-at-top
  table = neighbors.embedding_table(str(assets.CHECKPOINT_PATH))
  pieces = neighbors.Pieces(str(assets.VOCAB_PATH))
  out = []
  for run in sorted(_runs_of(sweep, "prompt_tuning", prompt_length=LENGTH),
                    key=lambda r: (r.init or "", r.seed)):
    if run.seed >= args.seeds or sweep.status(run) != "done":
      continue
    rows = neighbors.neighbor_rows(prompt_files.load_prompt(run.model_dir, checkpoint="latest"),
                                   table, pieces, k=1)
    out.append({"init": run.init, "seed": run.seed,
                "top1": [(r["tokens"][0], r["cosine"][0]) for r in rows]})
  return out


def _design(rows) -> Dict[str, float]:
  """{'prompt design': accuracy} when the rows have a prompt-design run."""
  values = [r["best"] for r in rows if r["method"] == "prompt_design"]
  return {"prompt design": values[0]} if values else {}


def ensemble(args, sweep) -> Dict[str, Any]:
  members = sorted(_runs_of(sweep, "prompt_tuning", prompt_length=LENGTH, init=INIT),
                   key=lambda r: r.seed)[:args.ensemble]
  out = pathlib.Path(args.output_dir) / "ensemble"
  cache = out / "ensemble.json"
  if cache.exists():
    return json.loads(cache.read_text())
  return ensemble_runs.ensemble_eval(
      {f"seed{r.seed}": str(r.model_dir) for r in members}, sweep.task,
      output_dir=str(out), max_examples=args.max_eval_examples,
      model_gin_files=[MODEL_GIN], gin_files=[COMMON_GIN],
      bindings=[runs_lib.binding("INFER_BATCH_SIZE", 100)])


# ------------------------------------------------------------------------------------
# Tables.
# ------------------------------------------------------------------------------------


def _trained_parameters(row) -> int:
  if row["method"] == "prompt_design":
    return 0
  arrays = train_state.read_trainable(row["model_dir"])
  return int(sum(a.size for a in arrays.values()))


def summary_table(rows, key: str, order=None) -> List[Dict[str, Any]]:
  groups = collect.aggregate(rows, [key], "best")
  if order:
    groups.sort(key=lambda g: order.index(g[key]) if g[key] in order else 99)
  return groups


def markdown_rows(groups, key: str, label=str, extra=None) -> str:
  head = f"| {key} | accuracy (mean ± std) | seeds |" + (" trained parameters |"
                                                        if extra else "")
  lines = [head, "|---|---|---|" + ("---|" if extra else "")]
  for g in groups:
    line = f"| {label(g[key])} | {g['mean']:.1f} ± {g['std']:.1f} | {g['n']} |"
    if extra:
      line += f" {extra.get(g[key], ''):,} |" if isinstance(
          extra.get(g[key]), int) else " |"
    lines.append(line)
  return "\n".join(lines)


def main(argv=None) -> Dict[str, Any]:
  args = parse_args(argv)
  args.output_dir = args.output_dir or f"results/replicate_{args.task}"
  start, load_start = time.time(), os.getloadavg()
  experiments = [e for e in args.experiments.split(",") if e]
  unknown = set(experiments) - set(EXPERIMENTS)
  if unknown:
    raise SystemExit(f"--experiments: unknown {sorted(unknown)}; choose from "
                     f"{EXPERIMENTS}.")
  out = pathlib.Path(args.output_dir)
  figures = pathlib.Path(args.figures or out / "figures")
  out.mkdir(parents=True, exist_ok=True)
  if not args.no_compilation_cache:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", str((out / "xla_cache").absolute()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  runs_lib.quiet_console()
  config = sweep_config(args, experiments)
  (out / "sweep.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
  sweep = sweep_lib.expand(config)
  failed = train_all(sweep, out)
  rows = collect.collect(sweep)
  collect.write_csv(rows, str(out / "results.csv"), collect.columns(sweep.extra_axes))
  finished = [r for r in rows if r["status"] == "done" and r["best"] is not None]
  # The main runs: no extra axis (not the longer budget runs, not LoPA's other
  # optimizer, which is reported as a method of its own).
  done = [r for r in finished if r.get("TRAIN_STEPS") is None and
          r.get("OPTIMIZER") is None]
  done += [dict(r, method=LOPA_ADAFACTOR_LABEL) for r in finished
           if r.get("OPTIMIZER") == LOPA_ADAFACTOR]
  results: Dict[str, Any] = {"failed": failed, "settings": vars(args)}
  sections = []

  at_length = [r for r in done if r["method"] != "prompt_tuning" or (
      r["prompt_length"] == LENGTH and r["init"] == INIT)]
  if "methods" in experiments:
    base = {"no prompt (frozen, taskless)": timed(out, "no_prompt", no_prompt, args,
                                                  sweep)}
    seeds_only = [r for r in at_length if r["seed"] < args.seeds]
    order = list(plots.METHOD_ORDER)
    order.insert(order.index("lopa") + 1, LOPA_ADAFACTOR_LABEL)
    groups = summary_table(seeds_only, "method", order)
    params = {}
    for r in seeds_only:
      params.setdefault(r["method"], _trained_parameters(r))
    results["methods"] = {"groups": groups, "no_prompt": base, "trained": params}
    sections.append("## Methods (prompt length 10, class-label init)\n\n" +
                    markdown_rows(groups, "method", lambda m: plots.METHOD_LABELS.get(
                        m, m), params) +
                    f"\n\nNo prompt (frozen model, taskless input): "
                    f"{list(base.values())[0]:.1f}")
    plots.methods_plot(seeds_only, str(figures / f"tiny_{args.task}_methods.png"),
                       baselines=base, order=order,
                       title=f"Tiny T5 (1.3M), {args.task}: methods",
                       ylabel="accuracy (%)")
  if "inits" in experiments:
    rows_init = [r for r in done if r["method"] == "prompt_tuning" and
                 r["prompt_length"] == LENGTH and r["seed"] < args.seeds]
    groups = summary_table(rows_init, "init", list(plots.INIT_LABELS))
    results["inits"] = groups
    sections.append("## Prompt initialization (prompt length 10)\n\n" +
                    markdown_rows(groups, "init",
                                  lambda i: plots.INIT_LABELS.get(i, i)))
    plots.ablation_plot(rows_init, str(figures / f"tiny_{args.task}_init.png"), "init",
                        title=f"Tiny T5, {args.task}: prompt initialization",
                        ylabel="accuracy (%)")
  if "lengths" in experiments:
    rows_len = [r for r in done if r["method"] == "prompt_tuning" and
                r["init"] == INIT and r["seed"] < args.seeds]
    groups = sorted(summary_table(rows_len, "prompt_length"),
                    key=lambda g: g["prompt_length"])
    results["lengths"] = groups
    sections.append("## Prompt length (class-label init)\n\n" +
                    markdown_rows(groups, "prompt_length"))
    plots.ablation_plot(rows_len, str(figures / f"tiny_{args.task}_prompt_length.png"),
                        "prompt_length",
                        title=f"Tiny T5, {args.task}: prompt length",
                        ylabel="accuracy (%)")
  if "budget" in experiments:
    results["budget"] = budget(args, sweep)
    curves = results["budget"]["curves"]
    steps = sorted({s for c in curves.values() for s, _ in c})
    sections.append(
        f"## Longer training ({args.budget_steps} steps, seed 0, evaluated every "
        f"{args.steps})\n\n| method | " + " | ".join(str(s) for s in steps) +
        " |\n|---|" + "---|" * len(steps) + "\n" +
        "".join(f"| {plots.METHOD_LABELS.get(m, m)} | " + " | ".join(
            f"{dict(c).get(s, float('nan')):.1f}" for s in steps) + " |\n"
                for m, c in curves.items()))
    plots.curves_plot({plots.METHOD_LABELS.get(m, m): c for m, c in curves.items()},
                      str(figures / f"tiny_{args.task}_budget.png"),
                      baselines=_design(done),
                      title=f"Tiny T5, {args.task}: {args.budget_steps} steps",
                      ylabel="accuracy (%)")
  if "interpret" in experiments:
    results["interpret"] = interpret(args, sweep)
    lines = ["| init | seed | nearest token of each prompt position (cosine) |",
             "|---|---|---|"]
    for item in results["interpret"]:
      cells = " ".join(f"`{t}` ({c:.2f})" for t, c in item["top1"])
      lines.append(f"| {plots.INIT_LABELS.get(item['init'], item['init'])} | "
                   f"{item['seed']} | {cells} |")
    sections.append("## Nearest vocabulary tokens of the trained prompts (length "
                    "10)\n\n" + "\n".join(lines))
  if "shift" in experiments:
    results["shift"] = timed(out, "shift", shift, args, sweep)
    sections.append("## Domain shift (trained on the source domain, zero-shot on "
                    "the others)\n\n" + results["shift"]["markdown"])
    plots.transfer_plot(results["shift"]["table"], str(figures / f"tiny_{args.task}_shift.png"),
                        title=f"Tiny T5, {args.task}: zero-shot domain shift")
  if "ensemble" in experiments:
    results["ensemble"] = timed(out, "ensemble", ensemble, args, sweep)
    e = results["ensemble"]
    sections.append(
        f"## Prompt ensemble ({len(e['members'])} prompts, majority vote)\n\n"
        "| | accuracy |\n|---|---|\n" +
        "".join(f"| {k} | {v:.1f} |\n" for k, v in e["members"].items()) +
        f"| mean of the prompts | {e['mean']:.1f} |\n| best prompt | {e['best']:.1f} |"
        f"\n| **ensemble** | **{e['ensemble']:.1f}** |")

  results["seconds"] = round(time.time() - start, 1)
  results["load_average"] = {"start": load_start, "end": os.getloadavg()}
  results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
  results["timing"] = timing_summary(out)
  header = (f"# Tiny replication ({sweep.task}, {args.steps} steps, "
            f"{args.seeds} seeds)\n\nThis invocation: {results['seconds'] / 60:.1f} "
            f"min wall on {os.cpu_count()} CPUs, load average (1/5/15 min) "
            f"{'/'.join(f'{x:.1f}' for x in load_start)} at the start, "
            f"{'/'.join(f'{x:.1f}' for x in results['load_average']['end'])} at the "
            f"end. All {results['timing']['steps']} timed steps (runs and "
            f"evaluations, over every invocation in {out}): "
            f"{results['timing']['seconds'] / 60:.1f} min, mean 1-minute load "
            f"{results['timing']['mean_load']}." +
            (f"\n\nFAILED runs: {failed}" if failed else ""))
  (out / "results.md").write_text("\n\n".join([header] + sections) + "\n")
  (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
  print("\n\n".join([header] + sections), flush=True)
  print(f"\nWrote {out}/results.md, results.json, results.csv; figures in {figures}.")
  return results


if __name__ == "__main__":
  errors.run_reporting("scripts/replicate_tiny.py", main, sys.argv[1:])
