r"""Evaluate one or many prompts (files or MODEL_DIRs) on one or many tasks.

  python scripts/evaluate.py \
      --source rte=/prompts/rte.npy --source /runs/rte_prompt --source frozen \
      --task super_glue_rte_v102 --task taskless_super_glue_rte_v102 \
      --model_gin models/t5_1_1_base.gin \
      --initial_checkpoint gs://…/t5_1_1_lm100k_base/checkpoint_1100000 \
      --gin "TASK_FEATURE_LENGTHS = {'inputs': 512, 'targets': 8}" \
      --output results/eval_rte            # -> results/eval_rte.csv and .json

Sources: a `.npy` `[P, H]` prompt, a training MODEL_DIR (prompt, prefix, LoPA or
model tuning; its best export, or --checkpoint latest / a step), or `frozen` (the
frozen model alone: prompt design). Name them with NAME=PATH. Each source x task
pair is one `python -m prompt_tuning.eval` call (printed, or only printed with
--print_commands). The table has one row per pair: source, path, method, task,
split, and every numeric metric (loss, accuracy, f1, …).

On the bundled tiny model:
  python scripts/evaluate.py --model_gin models/tiny_bundled.gin \
      --gin_file demo/tiny_common.gin --source frozen \
      --source demo=results/demo/runs/prompt_tuning_class_labels \
      --task tiny_sentiment --task taskless_tiny_sentiment --output /tmp/eval
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
from prompt_tuning.research import collect  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import eval_runs as evaluate_lib  # pylint: disable=g-import-not-at-top

LEADING = ["source", "path", "method", "task", "split"]


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.script_parser("scripts/evaluate.py", __doc__)
  p.add_argument("--source", action="append", required=True,
                 help="[NAME=]PATH of a .npy prompt or MODEL_DIR, or 'frozen' "
                      "(repeatable)")
  p.add_argument("--task", action="append", required=True,
                 help="a seqio task or mixture (repeatable; a mixture gives one row "
                      "per member task)")
  p.add_argument("--model_gin", action="append", default=[],
                 help="gin file(s) of the frozen model, e.g. models/t5_1_1_base.gin "
                      "(optional for MODEL_DIRs)")
  p.add_argument("--gin_file", action="append", default=[],
                 help="more gin files (after the eval/method gins)")
  p.add_argument("--gin", action="append", default=[],
                 help="a gin binding 'NAME = VALUE' (repeatable)")
  p.add_argument("--initial_checkpoint", default=None,
                 help="the frozen model's checkpoint (INITIAL_CHECKPOINT_PATH)")
  p.add_argument("--checkpoint", default="best",
                 help="MODEL_DIR export: best, latest or a step")
  p.add_argument("--split", default="validation")
  p.add_argument("--output", default=None,
                 help="write <output>.csv and <output>.json (and evaluation "
                      "metrics.jsonl under <output>_evals/)")
  p.add_argument("--print_commands", action="store_true",
                 help="print the prompt_tuning.eval command of each pair and exit")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  sources = [evaluate_lib.source(s) for s in args.source]
  names = [s.name for s in sources]
  if len(set(names)) != len(names):
    raise SystemExit(f"Source names must differ; got {names}. Name them NAME=PATH.")
  checkpoint = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
  kwargs = dict(model_gin_files=args.model_gin, gin_files=args.gin_file,
                bindings=args.gin, checkpoint=checkpoint,
                initial_checkpoint_path=args.initial_checkpoint)
  if args.print_commands:
    for src in sources:
      for task in args.task:
        print(evaluate_lib.eval_run(src, task, **kwargs).with_bindings(
            f"EVAL_SPLIT = {args.split!r}").command())
    return []
  out_dir = (str(pathlib.Path(args.output).parent /
                 (pathlib.Path(args.output).name + "_evals")) if args.output else None)
  rows = evaluate_lib.evaluate(sources, args.task, output_dir=out_dir,
                               split=args.split, **kwargs)
  metrics = []
  for row in rows:
    metrics += [k for k in row if k not in LEADING and k not in metrics]
  print(format_table(rows, LEADING[:1] + LEADING[3:4] + metrics))
  if args.output:
    out = pathlib.Path(args.output)
    collect.write_csv(rows, str(out.with_name(out.name + ".csv")), LEADING + metrics)
    out.with_name(out.name + ".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"Wrote {out}.csv and {out}.json")
  return rows


def format_table(rows, columns) -> str:
  cells = [columns] + [[_fmt(r.get(c)) for c in columns] for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                   for row in cells)


def _fmt(value) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


if __name__ == "__main__":
  main(sys.argv[1:])
