r"""Extract a trained prompt from a checkpoint to a `.npy` file (`[P, H]`, float32).

  python scripts/extract_prompt.py /runs/rte_prompt rte_prompt.npy
  python scripts/extract_prompt.py /runs/rte_prompt rte_step3000.npy --checkpoint 3000
  python scripts/extract_prompt.py /runs/rte_prompt/best rte.npy
  python scripts/extract_prompt.py /peft/adapter_dir rte.npy

Sources: a training MODEL_DIR (its `best/` export by default, `--checkpoint latest`
or a step; without a numpy export, the orbax state of that step), a directory of
exports holding `encoder.prompt.prompt.npy`, a PEFT prompt-tuning adapter, or a
`.npy` file (copied, checked to be `[P, H]`). The output is the released prompts'
format, loadable with configs/prompts/from_file.gin (`PROMPT_FILE`). For LoPA the
shared prompt Z_S is extracted (without its per-example heads).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
from prompt_tuning import errors  # pylint: disable=g-import-not-at-top
from prompt_tuning import prompt_files  # pylint: disable=g-import-not-at-top


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.script_parser("scripts/extract_prompt.py", __doc__)
  p.add_argument("source", help="MODEL_DIR, export directory, PEFT adapter or .npy")
  p.add_argument("output", help="the .npy file to write")
  p.add_argument("--checkpoint", default="best",
                 help="for a MODEL_DIR: best, latest or a step")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  checkpoint = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
  try:
    prompt = prompt_files.load_prompt(args.source, checkpoint=checkpoint)
  except (FileNotFoundError, ValueError, KeyError) as e:
    print(f"extract_prompt: error: {e}", file=sys.stderr)
    return 1
  path = prompt_files.save_prompt(args.output, prompt)
  print(f"Wrote {path}: prompt [{prompt.shape[0]}, {prompt.shape[1]}] from "
        f"{args.source}")
  return 0


if __name__ == "__main__":
  sys.exit(errors.run_reporting("scripts/extract_prompt.py", main, sys.argv[1:]))
