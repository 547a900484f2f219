r"""Diff two checkpoints: which parameters changed, and by how much.

  # Did prompt tuning leave the frozen model alone? The frozen checkpoint vs the
  # run (its recorded frozen model + the trained state on top):
  python scripts/diff_checkpoints.py prompt_tuning/assets/tiny_t5/checkpoint \
      /runs/topic_prompt

  # How far did model tuning move each weight?
  python scripts/diff_checkpoints.py prompt_tuning/assets/tiny_t5/checkpoint \
      /runs/topic_model

  # Two steps of one run:
  python scripts/diff_checkpoints.py /runs/topic_prompt@100 /runs/topic_prompt@300

Each side is a model checkpoint (T5X / Hugging Face / native), a training MODEL_DIR
(`MODEL_DIR@<step|latest|best>`, default latest), a directory of `.npy` exports, or
a `.npy` file. Prints one line per parameter (status same / changed / shape /
only_a / only_b, max |b - a|, relative L2 change, fraction of entries moved) and a
summary. When a side is a MODEL_DIR its trainable regexes (config.json) are checked:
the exit status is 2 if any parameter outside them changed ("frozen model stayed
frozen" failed), else 0. `--json` writes everything as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
from prompt_tuning import errors  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import diff as diff_lib  # pylint: disable=g-import-not-at-top


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.script_parser("scripts/diff_checkpoints.py", __doc__)
  p.add_argument("a", help="the reference (e.g. the frozen checkpoint)")
  p.add_argument("b", help="the other side (e.g. a MODEL_DIR)")
  p.add_argument("--atol", type=float, default=0.0,
                 help="entries moving by at most this much count as unchanged")
  p.add_argument("--all", action="store_true",
                 help="list unchanged parameters too (default: differences only)")
  p.add_argument("--trainable", action="append", default=None,
                 help="trainable regex(es) to check against (default: the "
                      "MODEL_DIR's config.json)")
  p.add_argument("--json", default=None, help="write the diff as JSON here")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  a, b = diff_lib.load(args.a), diff_lib.load(args.b)
  diffs = diff_lib.diff(a.params, b.params, args.atol)
  trainable = args.trainable or b.trainable or a.trainable
  summary = diff_lib.summary(diffs, trainable)
  print(f"a: {a.description}\nb: {b.description}\n")
  print(diff_lib.format_table(diffs, only_differences=not args.all))
  counts = ", ".join(f"{n} {k}" for k, n in sorted(summary["counts"].items()))
  print(f"\n{len(diffs)} parameters: {counts}.")
  if trainable is not None:
    frozen = [d.path for d in diffs if not diff_lib.matches(d.path, trainable)]
    if summary["frozen_unchanged"] and frozen:
      print(f"Every change is inside the trainable regexes {trainable}: the "
            f"{len(frozen)} frozen parameters are unchanged.")
    elif summary["frozen_unchanged"]:
      print(f"Every parameter matches the trainable regexes {trainable}: nothing is "
            "frozen.")
    else:
      print(f"CHANGED OUTSIDE the trainable regexes {trainable}: "
            f"{summary['changed_outside_trainable']}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"a": a.description, "b": b.description, "summary": summary,
                 "parameters": [d.as_dict() for d in diffs]}, f, indent=2)
  return 2 if trainable is not None and not summary["frozen_unchanged"] else 0


if __name__ == "__main__":
  sys.exit(errors.run_reporting("scripts/diff_checkpoints.py", main, sys.argv[1:]))
