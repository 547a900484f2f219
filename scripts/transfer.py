r"""Zero-shot domain transfer, model tuning vs prompt tuning (paper Tables 1 and 2).

Trains each method on the source task, evaluates every trained run on each target
task without further training, and writes a table: rows are target datasets,
columns model tuning, prompt tuning and Δ (prompt − model), mean ± std over seeds.

  # SQuAD -> the six MRQA out-of-domain sets (T5 1.1 base, as in Table 1):
  python scripts/transfer.py --preset squad_mrqa --model_gin models/t5_1_1_base.gin \
      --initial_checkpoint gs://t5-data/…/t5_1_1_lm100k_base/checkpoint_1100000 \
      --seeds 0,1,2 --output_dir results/transfer_squad

  # QQP -> MRPC and MRPC -> QQP (Table 2): --preset qqp_mrpc / --preset mrpc_qqp

  # The bundled tiny model (CPU, minutes): topic with shifted nouns / words / lengths
  python scripts/transfer.py --preset tiny_topic --model_gin models/tiny_bundled.gin \
      --gin_file demo/tiny_common.gin --gin "TRAIN_STEPS = 300" \
      --output_dir /tmp/transfer

Presets set the source, targets, metrics and TASK_FEATURE_LENGTHS; --source /
--target / --metric override them. Training runs are `prompt_tuning.train` calls
with methods/prompt_tuning.gin or methods/model_tuning.gin (the paper's optimizers);
each evaluation is a `prompt_tuning.eval` call. Finished runs and evaluations are
reused, so an interrupted experiment continues where it stopped. Both methods are
evaluated at their final step (--checkpoint; model tuning keeps only its latest
weights). --print_commands prints the training commands and exits.

Writes <output_dir>/transfer.csv (one row per run x target), table.md, table.json.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
from prompt_tuning import errors  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import collect  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import runs as runs_lib  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import transfer  # pylint: disable=g-import-not-at-top

# Bindings only training reads (prompt_tuning.eval does not register TrainConfig).
TRAIN_ONLY = ("TRAIN_STEPS", "EVAL_PERIOD", "CHECKPOINT_PERIOD", "KEEP_CHECKPOINTS",
              "RANDOM_SEED", "BEST_METRIC", "TrainConfig.", "train.")


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.script_parser("scripts/transfer.py", __doc__)
  p.add_argument("--preset", default=None, choices=transfer.PRESET_NAMES)
  p.add_argument("--source", default=None, help="the task trained on")
  p.add_argument("--target", action="append", default=None,
                 help="a target task (repeatable; include the source for the "
                      "in-domain row)")
  p.add_argument("--metric", action="append", default=None,
                 help="metric column(s) of the table (repeatable)")
  p.add_argument("--model_gin", action="append", required=True,
                 help="the frozen model's gin file(s)")
  p.add_argument("--gin_file", action="append", default=[],
                 help="more gin files for training and evaluation")
  p.add_argument("--gin", action="append", default=[],
                 help="'NAME = VALUE' gin binding for every run (repeatable)")
  p.add_argument("--initial_checkpoint", default=None,
                 help="INITIAL_CHECKPOINT_PATH (unless a model gin binds it)")
  p.add_argument("--methods", default="model_tuning,prompt_tuning")
  p.add_argument("--seeds", default="0", help="comma-separated RANDOM_SEEDs")
  p.add_argument("--prompt_length", type=int, default=None)
  p.add_argument("--init", default=None,
                 help="prompt initializer (configs/prompts/<init>.gin)")
  p.add_argument("--checkpoint", default="latest",
                 help="which export to evaluate: latest (default), best or a step")
  p.add_argument("--output_dir", required=True)
  p.add_argument("--print_commands", action="store_true")
  return p.parse_args(argv)


def plan_from_args(args) -> transfer.Plan:
  preset = transfer.presets()[args.preset] if args.preset else None
  source = args.source or (preset.source if preset else None)
  targets = args.target or (list(preset.targets) if preset else None)
  if not source or not targets:
    raise SystemExit("Give --preset, or --source and --target.")
  bindings = {}
  if preset and preset.feature_lengths:
    bindings["TASK_FEATURE_LENGTHS"] = dict(preset.feature_lengths)
  if args.initial_checkpoint:
    bindings["INITIAL_CHECKPOINT_PATH"] = args.initial_checkpoint
  for text in args.gin:
    name, value = runs_lib.split_binding(text)
    bindings[name] = runs_lib.RawGin(value)
  eval_bindings = [runs_lib.binding(k, v) for k, v in bindings.items()
                   if not k.startswith(TRAIN_ONLY)]
  checkpoint = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
  return transfer.Plan(
      source=source, targets=targets, model_gin_files=args.model_gin,
      output_dir=args.output_dir,
      metrics=args.metric or (list(preset.metrics) if preset else ["accuracy"]),
      methods=[m for m in args.methods.split(",") if m],
      seeds=[int(s) for s in args.seeds.split(",") if s],
      prompt_length=args.prompt_length, init=args.init, gin_files=args.gin_file,
      bindings=bindings, eval_bindings=eval_bindings, checkpoint=checkpoint,
      domains=dict(preset.domains) if preset else {})


def main(argv=None):
  args = parse_args(argv)
  plan = plan_from_args(args)
  runs = transfer.training_runs(plan)
  if args.print_commands:
    for run in runs:
      print(run.run.command())
    return None
  runs_lib.quiet_console()
  out = pathlib.Path(plan.output_dir)
  print(f"Source {plan.source}; targets {list(plan.targets)}; "
        f"{len(runs)} training runs.", flush=True)
  transfer.train(plan)
  rows = transfer.evaluate_targets(plan, runs)
  table = transfer.transfer_table(rows, plan)
  markdown = transfer.format_markdown(table, plan.metrics, plan.methods)
  collect.write_csv(rows, str(out / "transfer.csv"))
  (out / "table.md").write_text(markdown + "\n")
  (out / "table.json").write_text(json.dumps(table, indent=2) + "\n")
  print("\n" + markdown)
  print(f"\nWrote {out}/transfer.csv, table.md and table.json.")
  return table


if __name__ == "__main__":
  errors.run_reporting("scripts/transfer.py", main, sys.argv[1:])
