"""End to end from the command line: train → checkpoints/exports → eval → prompt file.

(The refusal of a MODEL_DIR with another configuration is tested in-process in
tests/test_trainer.py.)

The frozen model is the real T5X tiny checkpoint of the shared fixtures (embed 4, 2+2
layers, T5 vocabulary), the task a local JSONL task (tasks.local), everything driven
by `python -m prompt_tuning.train` / `prompt_tuning.eval` with the repo's gin files.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from conftest import REPO_ROOT, T5_VOCAB, T5X_TINY_CHECKPOINT


def _write_task(root: pathlib.Path):
  rng = np.random.RandomState(0)
  for split, n in (("train", 16), ("validation", 6)):
    with open(root / f"{split}.jsonl", "w") as f:
      for _ in range(n):
        label = ["negative", "positive"][rng.randint(2)]
        word = {"negative": "awful", "positive": "great"}[label]
        f.write(json.dumps({"inputs": f"the movie was {word}", "targets": label}) + "\n")


def _common(root: pathlib.Path):
  task = "tasks.local.register_local_task"
  return [
      "--gin_file=models/t5_1_1_tiny.gin",
      # The fixture's sizes (T5X stores no config; shapes must agree).
      "--gin.t5_preset.emb_dim=4", "--gin.t5_preset.num_heads=2",
      "--gin.t5_preset.head_dim=2", "--gin.t5_preset.mlp_dim=8",
      "--gin.t5_preset.relative_attention_num_buckets=4",
      "--gin.t5_preset.relative_attention_max_distance=8",
      f"--gin.MIXTURE_OR_TASK_NAME=@{task}()",
      f"--gin.{task}.name='e2e_sentiment'",
      f"--gin.{task}.train='{root / 'train.jsonl'}'",
      f"--gin.{task}.validation='{root / 'validation.jsonl'}'",
      f"--gin.{task}.labels=['negative', 'positive']",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
      "--gin.PROMPT_LENGTH=3",
      f"--gin.INITIAL_CHECKPOINT_PATH='{T5X_TINY_CHECKPOINT}'",
  ]


def _event_tags(directory: pathlib.Path):
  """The tags written to TensorBoard event files in `directory`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tags = set()
  for path in directory.glob("events.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      tags.update(v.tag for v in event.summary.value)
  return tags


def _run(module, args, check=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PROMPT_TUNING_VOCAB=str(T5_VOCAB))
  proc = subprocess.run([sys.executable, "-m", module] + args, cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  if check:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc


def test_train_eval_and_prompt_file_from_the_command_line(tmp_path, shared_fixtures):
  del shared_fixtures  # fails clearly when ../shared/fixtures is missing
  _write_task(tmp_path)
  model_dir = tmp_path / "run"
  train_args = ["--gin_file=methods/prompt_tuning.gin",
                "--gin_file=runs/prompt_finetune.gin"] + _common(tmp_path) + [
      f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=4", "--gin.EVAL_PERIOD=2",
      "--gin.CHECKPOINT_PERIOD=2", "--gin.BATCH_SIZE=4", "--gin.TrainConfig.log_period=2"]
  proc = _run("prompt_tuning.train", train_args)
  assert "step 4/4" in proc.stderr and "ETA" in proc.stderr
  assert "Done at step 4." in proc.stderr  # a normal end says so (issue 14)

  # What a run leaves in MODEL_DIR.
  record = json.loads((model_dir / "config.json").read_text())
  assert record["initial_checkpoint_path"] == str(T5X_TINY_CHECKPOINT)
  assert record["method"] == "prompt" and record["trainable"] == [r".*/prompt/.*"]
  assert record["task"] == "e2e_sentiment" and record["model_config"]["emb_dim"] == 4
  assert (model_dir / "checkpoint_4").is_dir() and not (model_dir / "checkpoint_2").exists()
  prompt = np.load(model_dir / "numpy_checkpoints" / "checkpoint_4" /
                   "encoder.prompt.prompt.npy")
  assert prompt.shape == (3, 4)
  train_tags = _event_tags(model_dir / "train")
  assert {"loss", "learning_rate", "steps_per_sec", "z_loss"} <= train_tags
  assert {"e2e_sentiment/accuracy", "e2e_sentiment/examples"} <= _event_tags(
      model_dir / "eval")
  lines = [json.loads(l) for l in (model_dir / "metrics.jsonl").read_text().splitlines()]
  evals = [l for l in lines if l["task"] == "e2e_sentiment"]
  assert [l["step"] for l in evals] == [2, 4]
  assert {"loss", "accuracy", "mean_2class_f1", "num_examples"} <= set(evals[0])
  best = json.loads((model_dir / "best" / "best.json").read_text())
  assert best["metric"] == "accuracy" and best["step"] in (2, 4)
  best_line = next(l for l in evals if l["step"] == best["step"])

  # Evaluating the MODEL_DIR (best export) reproduces that evaluation.
  eval_args = ["--gin_file=methods/prompt_tuning.gin",
               "--gin_file=runs/prompt_eval.gin"] + _common(tmp_path) + [
      "--gin.EVAL_BATCH_SIZE=4"]
  _run("prompt_tuning.eval", eval_args + [f"--gin.MODEL_DIR='{model_dir}'"])
  lines = [json.loads(l) for l in (model_dir / "metrics.jsonl").read_text().splitlines()]
  again = lines[-1]
  assert again["source"].endswith("best") and again["step"] == best["step"]
  np.testing.assert_allclose(again["loss"], best_line["loss"], rtol=1e-5)
  assert again["accuracy"] == best_line["accuracy"]

  # The latest .npy export as a prompt file (from-file initializer) gives the
  # step-4 evaluation.
  out = tmp_path / "prompt_eval"
  proc = _run("prompt_tuning.eval", eval_args + [
      "--gin_file=prompts/from_file.gin",
      f"--gin.PROMPT_FILE='{model_dir / 'numpy_checkpoints/checkpoint_4/encoder.prompt.prompt.npy'}'",
      f"--gin.EVAL_OUTPUT_DIR='{out}'"])
  assert "e2e_sentiment" in proc.stdout and "accuracy" in proc.stdout
  from_file = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
  np.testing.assert_allclose(from_file["loss"], evals[-1]["loss"], rtol=1e-5)



def test_missing_macro_on_the_command_line_is_a_usage_error(tmp_path):
  proc = _run("prompt_tuning.train",
              ["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/prompt_finetune.gin",
               "--gin.MIXTURE_OR_TASK_NAME='x'", "--gin.INITIAL_CHECKPOINT_PATH=None"],
              check=False)
  assert proc.returncode != 0
  assert "MODEL_DIR: add --gin.MODEL_DIR=" in proc.stderr
  assert "TASK_FEATURE_LENGTHS" in proc.stderr
