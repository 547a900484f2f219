r"""`make demo`: prompt tuning of the bundled tiny T5 on a CPU in a few minutes.

  python -m prompt_tuning.demo [--output_dir results/demo] [--task sentiment]

The bundled model (`prompt_tuning/assets/tiny_t5/`) was pretrained like the paper's
frozen models, in miniature: span corruption, then LM adaptation, each mixed with a
multitask mixture in which every input starts with its task word (`sentiment: the
happy dog sees a car .` -> `positive`). Several tasks read the same sentences, so
without the task word the model cannot know which one is asked.

The demo takes one of those tasks with its task word removed (the paper's
"taskless" setting, `taskless_tiny_<task>`) and measures, with the frozen model:

  no prompt       the bare sentence                       (near or below chance)
  prompt design   the textual task word `sentiment:`      (what the skill gives)
  prompt tuning   a learned prompt, class-label init      (should recover it)
                  (and random / sampled-vocab inits)

and then one multi-task result: a bank of two prompts (sentiment, topic) trained in
one run on the mixture `taskless_tiny_sentiment_topic`, each example of the mixed
batches routed to its task's prompt, scored per task against prompt design.

Every run goes through the public entry points and gin files, exactly as a TPU job
would: `prompt_tuning.train.train` / `prompt_tuning.eval.evaluate` configured by
`configs/models/tiny_bundled.gin`, `configs/runs/*.gin`, `configs/methods/*.gin`,
`configs/prompts/*.gin` and the demo's overrides in `configs/demo/*.gin`. The
equivalent command line of each run is printed.

Writes to `--output_dir`: `results.json` (the tables and every run's metrics),
`prompt_<init>.npy` (the trained `[P, H]` prompts), `learning_curve.png`, and the
MODEL_DIR of each run under `runs/` (`runs/multitask/best/` holds the `[K, P, H]` bank
that `prompt_tuning.infer` serves mixed, docs/INFERENCE.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # pylint: disable=g-import-not-at-top

TRAIN_GIN = "demo/tiny_prompt_tuning.gin"
EVAL_GIN = "demo/tiny_eval.gin"
PROMPT_LENGTH = 10  # the toy inputs are short; a flag, as the method gin holds it
INITS = ("class_labels", "random_uniform", "sampled_vocab")
INIT_NAMES = {"class_labels": "class-label init", "random_uniform": "random init",
              "sampled_vocab": "sampled-vocab init"}
MODEL_GIN = "models/tiny_bundled.gin"
EVAL_FILES = [MODEL_GIN, "runs/prompt_eval.gin", "methods/prompt_design.gin", EVAL_GIN]
# The multi-task part: the mixture and its member tasks (scored per task by name).
MIXTURE = "taskless_tiny_sentiment_topic"
MIXTURE_TASKS = ("sentiment", "topic")


@dataclasses.dataclass
class Run:
  """One entry-point call: what it is, its gin files and bindings."""
  name: str
  label: str
  entry: str  # "train" or "eval"
  gin_files: List[str]
  bindings: List[str]
  model_dir: Optional[str] = None

  def command(self) -> str:
    flags = [f"--gin_file={f}" for f in self.gin_files]
    flags += [f"--gin.{b.split(' = ', 1)[0]}=\"{b.split(' = ', 1)[1]}\""
              for b in self.bindings]
    return f"python -m prompt_tuning.{self.entry} " + " ".join(flags)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m prompt_tuning.demo", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--output_dir", default="results/demo")
  p.add_argument("--task", default="sentiment",
                 help="a classification task of the bundled model (sentiment, topic)")
  p.add_argument("--inits", default=",".join(INITS),
                 help=f"comma-separated prompt initializers among {INITS}")
  p.add_argument("--train_steps", type=int, default=None,
                 help="override TRAIN_STEPS of configs/demo/tiny_prompt_tuning.gin")
  p.add_argument("--eval_period", type=int, default=None)
  p.add_argument("--max_eval_examples", type=int, default=None)
  p.add_argument("--multitask", action=argparse.BooleanOptionalAction, default=True,
                 help=f"also train a 2-task prompt bank on {MIXTURE} (default: on)")
  p.add_argument("--gin", action="append", default=[],
                 help="extra gin binding for every run, e.g. --gin \"PROMPT_LENGTH = 5\"")
  return p.parse_args(argv)


# ----------------------------------------------------------------------------------
# Running the entry points in this process.
# ----------------------------------------------------------------------------------
def run_entry(run: Run) -> object:
  """Parses the run's gin like the command line does and calls the entry point."""
  import gin  # pylint: disable=g-import-not-at-top
  from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
  from prompt_tuning import eval as eval_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train as train_lib  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    cli.parse_gin(run.gin_files, run.bindings)
    if run.entry == "train":
      cli.check_required_macros(cli.TRAIN_MACROS)
      return train_lib.train(gin_config=gin.config_str())
    cli.check_required_macros(eval_lib.EVAL_MACROS)
    return eval_lib.evaluate()
  finally:
    gin.clear_config()  # leave no binding (e.g. the tasks' vocabulary) behind


def frozen_checksum() -> str:
  """sha256 over every frozen tensor of the bundled checkpoint, in path order."""
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning.params import flatten  # pylint: disable=g-import-not-at-top
  from prompt_tuning.tiny import assets  # pylint: disable=g-import-not-at-top
  _, params = checkpoints.load(assets.CHECKPOINT_PATH)
  digest = hashlib.sha256()
  for path, value in sorted(flatten(params).items()):
    digest.update(path.encode())
    digest.update(np.ascontiguousarray(value, np.float32).tobytes())
  return digest.hexdigest()


def _metrics(results) -> Dict[str, float]:
  (result,) = results.values()
  return {k: float(v) for k, v in result.metrics.items()
          if isinstance(v, (int, float))}


def _not_a_label(metrics: Dict[str, float]) -> float:
  """Percent of predictions that were none of the task's label strings."""
  return 100.0 * metrics.get("invalid_predictions", 0.0) / max(
      metrics.get("num_examples", 1.0), 1.0)


def _curve(model_dir: pathlib.Path, task: str) -> List[Dict[str, float]]:
  """(step, accuracy) of every evaluation a training run logged."""
  from prompt_tuning.run_dir import layout  # pylint: disable=g-import-not-at-top
  points = []
  for row in layout.evaluations(model_dir, task):
    if "accuracy" in row:
      points.append({"step": row["step"], "accuracy": row["accuracy"],
                     "not_a_label": _not_a_label(row)})
  return points


# ----------------------------------------------------------------------------------
# Output.
# ----------------------------------------------------------------------------------
def format_table(rows: Sequence[Dict], chance: float) -> str:
  """accuracy, share of outputs that are no label at all, trained parameters."""
  lines = [f"{'setting':36s} {'accuracy':>9s} {'not a label':>12s} "
           f"{'trained params':>15s}", "-" * 75]
  for row in rows:
    lines.append(f"{row['label']:36s} {row['accuracy']:8.1f}% "
                 f"{row['not_a_label']:11.1f}% {row['trained_parameters']:>15,d}")
  chance_label = f"(chance: 1 of {round(100 / chance)} labels)"
  lines.append(f"{chance_label:36s} {chance:8.1f}%")
  return "\n".join(lines)


def plot(curves: Dict[str, Dict], baselines: Dict[str, float], chance: float,
         path: pathlib.Path, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for label, curve in curves.items():
    losses = curve["losses"]
    if losses:
      steps = sorted(losses)
      left.plot(steps, [losses[s] for s in steps], label=label, linewidth=1)
    points = curve["eval"]
    if points:
      right.plot([p["step"] for p in points], [p["accuracy"] for p in points],
                 marker="o", label=label)
  left.set(xlabel="step", ylabel="training loss", title="Prompt tuning: loss")
  left.legend()
  styles = ["--", ":", "-."]
  for (label, value), style in zip(baselines.items(), styles):
    right.axhline(value, linestyle=style, color="gray", label=label)
  right.axhline(chance, linestyle="-", color="lightgray", label="chance")
  right.set(xlabel="step", ylabel="validation accuracy (%)", ylim=(-2, 102),
            title=title)
  right.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# ----------------------------------------------------------------------------------
# The demo.
# ----------------------------------------------------------------------------------
def build_runs(args, out: pathlib.Path) -> List[Run]:
  from prompt_tuning.tiny import corpus  # pylint: disable=g-import-not-at-top
  if args.task not in corpus.LABELS:
    raise ValueError(f"--task {args.task!r}: the demo needs a classification task of "
                     f"the bundled model, one of {sorted(corpus.LABELS)}.")
  task, taskless = f"tiny_{args.task}", f"taskless_tiny_{args.task}"
  common = [f"MIXTURE_OR_TASK_NAME = '{taskless}'"]
  overrides = _overrides(args)
  runs = [
      Run("no_prompt", "frozen model, no prompt", "eval", EVAL_FILES,
          common + overrides),
      Run("prompt_design", f"prompt design (text '{args.task}:')", "eval",
          EVAL_FILES, [f"MIXTURE_OR_TASK_NAME = '{task}'"] + overrides),
  ]
  for init in [i for i in args.inits.split(",") if i]:
    if init not in INITS:
      raise ValueError(f"--inits: unknown initializer {init!r}; choose from {INITS}.")
    model_dir = out / "runs" / f"prompt_tuning_{init}"
    runs.append(Run(
        f"prompt_tuning_{init}", f"prompt tuning, {INIT_NAMES[init]}", "train",
        [MODEL_GIN, "methods/prompt_tuning.gin", f"prompts/{init}.gin",
         "runs/prompt_finetune.gin", TRAIN_GIN],
        common + [f"MODEL_DIR = '{model_dir}'", f"PROMPT_LENGTH = {PROMPT_LENGTH}"]
        + overrides, str(model_dir)))
  return runs


def _overrides(args) -> List[str]:
  """The demo's flags as gin bindings shared by every run."""
  overrides = []
  if args.train_steps is not None:
    overrides.append(f"TRAIN_STEPS = {args.train_steps}")
  if args.eval_period is not None:
    overrides.append(f"EVAL_PERIOD = {args.eval_period}")
  if args.max_eval_examples is not None:
    overrides.append(f"MAX_EVAL_EXAMPLES = {args.max_eval_examples}")
  return overrides + list(args.gin)


def build_multitask_runs(args, out: pathlib.Path,
                         measured: Sequence[str] = ()) -> List[Run]:
  """Prompt design of each member task not `measured` yet, then one run training a
  prompt per task on the mixture (methods/multitask_prompt_tuning.gin, as
  docs/TRAINING.md shows)."""
  overrides = _overrides(args)
  runs = [Run(f"prompt_design_{t}", f"prompt design (text '{t}:')", "eval",
              EVAL_FILES, [f"MIXTURE_OR_TASK_NAME = 'tiny_{t}'"] + overrides)
          for t in MIXTURE_TASKS if t not in measured]
  model_dir = out / "runs" / "multitask"
  runs.append(Run(
      "multitask", f"multi-task prompt bank ({' + '.join(MIXTURE_TASKS)})", "train",
      [MODEL_GIN, "methods/multitask_prompt_tuning.gin", "prompts/sampled_vocab.gin",
       "runs/prompt_finetune.gin", TRAIN_GIN],
      [f"MIXTURE_OR_TASK_NAME = '{MIXTURE}'", f"MODEL_DIR = '{model_dir}'",
       f"PROMPT_LENGTH = {PROMPT_LENGTH}"] + overrides, str(model_dir)))
  return runs


def main(argv=None) -> Dict:
  args = parse_args(argv)
  start = time.time()
  out = pathlib.Path(args.output_dir).resolve()
  if (out / "runs").exists():
    shutil.rmtree(out / "runs")  # a fresh run, not a resumed one
  out.mkdir(parents=True, exist_ok=True)

  from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
  from prompt_tuning.tiny import assets, corpus  # pylint: disable=g-import-not-at-top
  cli.setup_logging()
  _log_to_console()
  assets.check_present()
  manifest = json.loads(assets.MANIFEST_PATH.read_text())
  print(f"Bundled tiny T5: {manifest['parameter_count']:,} parameters, "
        f"{assets.ASSET_DIR}", flush=True)
  before = frozen_checksum()
  print(f"Frozen weights sha256: {before}", flush=True)

  labels = corpus.LABELS[args.task]
  chance = 100.0 / len(labels)
  rows, curves, runs_out = [], {}, {}
  baselines = {}
  runs = build_runs(args, out)
  for i, run in enumerate(runs, 1):
    print(f"\n[{i}/{len(runs)}] {run.label} ({time.time() - start:.0f}s elapsed)\n"
          f"  {run.command()}", flush=True)
    result = run_entry(run)
    if run.entry == "eval":
      metrics = _metrics(result)
      accuracy, not_a_label = metrics["accuracy"], _not_a_label(metrics)
      baselines[run.label] = accuracy
      trained = 0
      record = {"accuracy": accuracy, "metrics": metrics}
    else:
      model_dir = pathlib.Path(run.model_dir)
      points = _curve(model_dir, f"taskless_tiny_{args.task}")
      accuracy = points[-1]["accuracy"] if points else float("nan")
      not_a_label = points[-1]["not_a_label"] if points else float("nan")
      prompt = _prompt_of(result)
      np.save(out / f"{run.name.replace('prompt_tuning', 'prompt')}.npy", prompt)
      trained = int(prompt.size)
      curves[run.label] = {"losses": result.losses, "eval": points}
      record = {"accuracy": accuracy, "eval_curve": points,
                "best": result.best, "prompt_shape": list(prompt.shape),
                "model_dir": str(model_dir)}
    print(f"  -> accuracy {accuracy:.1f}%", flush=True)
    rows.append({"name": run.name, "label": run.label, "accuracy": accuracy,
                 "not_a_label": not_a_label, "trained_parameters": trained})
    runs_out[run.name] = dict(record, command=run.command())

  multitask = run_multitask(args, out, start, {args.task: baselines[runs[1].label]}
                            ) if args.multitask else None
  after = frozen_checksum()
  table = format_table(rows, chance)
  plot(curves, baselines, chance, out / "learning_curve.png",
       f"taskless_tiny_{args.task} (validation)")
  design = baselines.get(runs[1].label, float("nan"))
  relative = {r["name"]: round(100.0 * r["accuracy"] / design, 1) if design else None
              for r in rows if r["name"].startswith("prompt_tuning")}
  summary = {
      "task": f"taskless_tiny_{args.task}", "labels": list(labels),
      "chance": chance, "table": rows, "runs": runs_out,
      "frozen_sha256_before": before, "frozen_sha256_after": after,
      "frozen_unchanged": before == after,
      "percent_of_prompt_design": relative,
      "multitask": multitask,
      "seconds": round(time.time() - start, 1),
  }
  (out / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
  print("\n" + table, flush=True)
  for name, value in relative.items():
    print(f"{name}: {value}% of prompt design's accuracy")
  if multitask:
    print("\n" + format_multitask_table(multitask), flush=True)
  print(f"\nFrozen weights sha256 after training: {after} "
        f"({'unchanged' if before == after else 'CHANGED'})")
  print(f"Wrote {out}/results.json, learning_curve.png and the prompts "
        f"(prompt_<init>.npy) in {time.time() - start:.0f}s.", flush=True)
  return summary


def run_multitask(args, out: pathlib.Path, start: float,
                  design: Dict[str, float]) -> Dict:
  """Trains the 2-task bank; per task: prompt design (`design` holds those already
  measured) and the bank's prompt (the task's accuracy at the last evaluation, as
  the single-task rows)."""
  from prompt_tuning import params  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods import multitask as multitask_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.tiny import corpus  # pylint: disable=g-import-not-at-top
  design = {t: v for t, v in design.items() if t in MIXTURE_TASKS}
  runs = build_multitask_runs(args, out, list(design))
  for run in runs:
    print(f"\n[multi-task] {run.label} ({time.time() - start:.0f}s elapsed)\n"
          f"  {run.command()}", flush=True)
    result = run_entry(run)
    if run.entry == "eval":
      design[run.name.split("_")[-1]] = _metrics(result)["accuracy"]
  train = runs[-1]
  bank = np.asarray(params.get_param(result.trainable, multitask_lib.TASKS_PATH))
  tasks = []
  for task in MIXTURE_TASKS:
    points = _curve(pathlib.Path(train.model_dir), f"taskless_tiny_{task}")
    tasks.append({"task": task, "prompt_design": design[task],
                  "accuracy": points[-1]["accuracy"] if points else float("nan"),
                  "not_a_label": points[-1]["not_a_label"] if points else float("nan"),
                  "chance": 100.0 / len(corpus.LABELS[task]), "eval_curve": points})
  return {"mixture": MIXTURE, "tasks": tasks, "bank_shape": list(bank.shape),
          "trained_parameters": int(bank.size), "model_dir": train.model_dir,
          "command": train.command()}


def format_multitask_table(multitask: Dict) -> str:
  """Per task: prompt design, the task's prompt of the jointly trained bank, chance."""
  k, length, width = multitask["bank_shape"]
  lines = [f"Multi-task: one run trains {k} prompts on {multitask['mixture']}, each "
           f"example routed to its task's prompt",
           f"{'task':12s} {'prompt design':>14s} {'multi-task prompt':>18s} "
           f"{'not a label':>12s} {'chance':>7s}", "-" * 67]
  for row in multitask["tasks"]:
    lines.append(f"{row['task']:12s} {row['prompt_design']:13.1f}% "
                 f"{row['accuracy']:17.1f}% {row['not_a_label']:11.1f}% "
                 f"{row['chance']:6.1f}%")
  lines.append(f"trained parameters: {multitask['trained_parameters']:,} "
               f"({k} prompts x {length} x {width})")
  return "\n".join(lines)


class _OwnInfoFilter:
  """Keeps this package's INFO lines (progress, evaluations) and others' warnings,
  minus seqio's advice to cache a task (the demo's tasks are generated in memory)."""

  def __init__(self):
    self.package = str(pathlib.Path(__file__).resolve().parent)

  def filter(self, record) -> bool:
    if "uncached FunctionDataset" in str(record.msg):
      return False
    return (record.levelno >= 30 or
            str(record.pathname).startswith(self.package))


def _log_to_console() -> None:
  """Shows the entry points' progress and evaluation lines on stderr, as `cli.run`
  does for the command-line tools, without taking over sys.argv."""
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _OwnInfoFilter) for f in handler.filters):
    handler.addFilter(_OwnInfoFilter())


def _prompt_of(result) -> np.ndarray:
  """The trained `[P, H]` prompt in a TrainResult's trainable parameters."""
  from prompt_tuning import params, prompt_files  # pylint: disable=g-import-not-at-top
  return prompt_files.load_prompt(
      params.get_param(result.trainable, prompt_files.PROMPT_PATH))


if __name__ == "__main__":
  main(sys.argv[1:])
