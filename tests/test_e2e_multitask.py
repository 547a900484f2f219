"""The multi-task walkthrough of docs/TRAINING.md and docs/INFERENCE.md, run as written
(on a few steps): train a 2-task bank on the bundled tiny model, evaluate it per
task, serve it mixed."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from conftest import REPO_ROOT
from test_gin_structure import documented_commands

TASKS = ["taskless_tiny_sentiment", "taskless_tiny_topic"]
DOC_DIR = "/tmp/tiny_mt"  # the MODEL_DIR of the documented commands
SHORT = ["--gin.TRAIN_STEPS=2", "--gin.EVAL_PERIOD=2", "--gin.BATCH_SIZE=8",
         "--gin.MAX_EVAL_EXAMPLES=4", "--gin.TrainConfig.eval_batch_size=4",
         "--gin.TrainConfig.log_period=1"]


def _documented(doc, entry, marker):
  found = [argv for d, e, argv in documented_commands()
           if d == doc and e == entry and any(marker in a for a in argv)]
  assert len(found) == 1, (doc, entry, marker, found)
  return found[0]


def _run(module, argv):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", module] + argv, cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc


def _requests(path: pathlib.Path):
  """The requests the INFERENCE.md walkthrough writes with printf."""
  text = (pathlib.Path(REPO_ROOT) / "docs" / "INFERENCE.md").read_text()
  start = text.index("A multi-task run, served mixed")
  block = text[text.index("printf", start):text.index("> requests.jsonl", start)]
  lines = [line.strip().strip("\\").strip().strip("'") for line in block.splitlines()[1:]]
  path.write_text("".join(line + "\n" for line in lines if line))
  return [json.loads(line) for line in lines if line]


def test_train_a_two_task_bank_and_serve_it_mixed(tmp_path):
  model_dir = tmp_path / "tiny_mt"
  train = [a.replace(DOC_DIR, str(model_dir)) for a in
           _documented("TRAINING.md", "train", "methods/multitask_prompt_tuning.gin")]
  _run("prompt_tuning.train", train + SHORT)

  record = json.loads((model_dir / "config.json").read_text())
  assert record["method"] == "multitask_prompt" and record["prompt_names"] == TASKS
  assert (model_dir / "model_fingerprint.json").is_file()
  bank = np.load(model_dir / "best" / "encoder.prompt.prompts.npy")
  assert bank.shape == (2, 10, 128)
  for k, task in enumerate(TASKS):  # each task's best row, also alone
    np.testing.assert_array_equal(
        np.load(model_dir / "best" / task / "encoder.prompt.prompt.npy"), bank[k])
  evaluated = {json.loads(line).get("task") for line in
               (model_dir / "metrics.jsonl").read_text().splitlines()}
  assert set(TASKS) <= evaluated

  evaluate = [a.replace(DOC_DIR, str(model_dir)) for a in
              _documented("TRAINING.md", "eval", "taskless_tiny_sentiment_topic")]
  proc = _run("prompt_tuning.eval", evaluate + ["--gin.MAX_EVAL_EXAMPLES=4",
                                                "--gin.EVAL_BATCH_SIZE=4"])
  assert all(task in proc.stdout for task in TASKS), proc.stdout  # one row per task
  evaluated_best = [json.loads(line) for line in
                    (model_dir / "metrics.jsonl").read_text().splitlines()][-2:]
  best = json.loads((model_dir / "best" / "best.json").read_text())["tasks"]
  for line in evaluated_best:  # each task with its own best prompt (same 4 examples)
    assert line["accuracy"] == best[line["task"]]["value"], (line, best)

  requests = _requests(tmp_path / "requests.jsonl")
  infer = [a.replace(DOC_DIR, str(model_dir)).replace(
      "requests.jsonl", str(tmp_path / "requests.jsonl")) for a in
           _documented("INFERENCE.md", "infer", "--prompt=tiny_mt")]
  proc = _run("prompt_tuning.infer", infer)
  records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  assert [r["prompt"] for r in records] == [r["prompt"] for r in requests]
  assert all(isinstance(r["prediction"], str) and "error" not in r for r in records)
  assert "has no model fingerprint" not in proc.stderr  # the run's exports carry it
