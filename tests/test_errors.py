"""One error path (issue 14, item 5): user errors are one line and a non-zero exit,
bugs keep their traceback, SIGTERM checkpoints and exits 143, prompt files are
checked before any frozen weight is read, in every entry point."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO_ROOT, T5_VOCAB, run_entry_point

from prompt_tuning import cli, errors, infer
from prompt_tuning.prompt_files import PromptFileError
from prompt_tuning.models.config import T5Config

TINY = ["--gin_file=models/tiny_bundled.gin", "--gin_file=methods/prompt_tuning.gin",
        "--gin_file=runs/prompt_finetune.gin", "--gin_file=demo/tiny_common.gin",
        "--gin.MIXTURE_OR_TASK_NAME='taskless_tiny_sentiment'",
        "--gin.PROMPT_LENGTH=2", "--gin.BATCH_SIZE=4"]


# ------------------------------------------------------------------ the error path


def test_a_user_error_is_one_line_and_exit_1(capsys):
  def main(argv):
    del argv
    raise PromptFileError("Prompt file x.npy has shape [5, 4]; expected [3, 4]\n"
                          "  (second line)")

  with pytest.raises(SystemExit) as exit_info:
    cli.run(main, argv=["/somewhere/prompt_tuning/eval.py"])
  assert exit_info.value.code == errors.EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert err.strip() == ("prompt_tuning.eval: error: Prompt file x.npy has shape "
                         "[5, 4]; expected [3, 4] (second line)")


def test_a_bug_keeps_its_traceback():
  def main(argv):
    del argv
    raise KeyError("a bug")

  with pytest.raises(KeyError, match="a bug"):
    cli.run(main, argv=["train.py"])
  with pytest.raises(ZeroDivisionError):
    errors.run_reporting("scripts/x.py", lambda: 1 / 0)


def test_scripts_report_user_errors_the_same_way(tmp_path):
  sweep = tmp_path / "bad.yaml"
  sweep.write_text("output_dir: /tmp/x\ntask: t\nbogus_key: 1\n")
  proc = subprocess.run(
      [sys.executable, "scripts/sweep.py", "list", str(sweep)],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT)))
  assert proc.returncode == errors.EXIT_USER_ERROR, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "scripts/sweep.py: error: Unknown sweep keys ['bogus_key']")


# ------------------------------------------------------------------ prompt files first


def test_eval_checks_the_prompt_file_before_reading_the_checkpoint(tmp_path):
  prompt = tmp_path / "p.npy"
  np.save(prompt, np.zeros((7, 128), np.float32))
  proc = run_entry_point("prompt_tuning.eval", [
      "--gin_file=models/tiny_bundled.gin", "--gin_file=methods/prompt_tuning.gin",
      "--gin_file=runs/prompt_eval.gin", "--gin_file=prompts/from_file.gin",
      "--gin_file=demo/tiny_common.gin", "--gin.PROMPT_LENGTH=10",
      "--gin.MIXTURE_OR_TASK_NAME='taskless_tiny_sentiment'",
      f"--gin.PROMPT_FILE='{prompt}'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'no_checkpoint'}'"])
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  lines = [l for l in proc.stderr.splitlines() if "prompt_tuning.eval: error:" in l]
  assert lines == [f"prompt_tuning.eval: error: Prompt file {prompt} has shape "
                   "[7, 128]; expected [10, 128] (prompt length P, model width H): "
                   "set PROMPT_LENGTH to 7."]


@pytest.mark.parametrize("array,message", [
    (np.full((3, 16), np.nan, np.float32), "holds 48 non-finite values (NaN/inf)"),
    (np.zeros((3, 8), np.float32), "has shape [3, 8]; expected [P, 16]"),
    (np.zeros((3, 16), np.int32), "has dtype int32"),
])
def test_infer_checks_prompt_files_before_reading_the_checkpoint(tmp_path, array,
                                                                  message):
  path = tmp_path / "p.npy"
  np.save(path, array)
  config = T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                    num_encoder_layers=1, num_decoder_layers=1)
  # The checkpoint does not exist: reading it first would fail differently.
  with pytest.raises(PromptFileError) as error:
    infer.load_bank_model({"p": str(path)}, config, str(tmp_path / "missing"))
  assert f"Prompt file {path} " in str(error.value)
  assert message in str(error.value)


# ------------------------------------------------------------------ SIGTERM


def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path):
  model_dir = tmp_path / "run"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PROMPT_TUNING_VOCAB=str(T5_VOCAB))
  proc = subprocess.Popen(
      [sys.executable, "-m", "prompt_tuning.train"] + TINY + [
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=100000",
          "--gin.EVAL_PERIOD=-1", "--gin.CHECKPOINT_PERIOD=100000",
          "--gin.TrainConfig.log_period=1"],
      cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
  seen = []
  deadline = time.time() + 600
  for line in proc.stderr:  # wait for the first training steps
    seen.append(line)
    if "step 2/100000" in line or time.time() > deadline:
      break
  proc.send_signal(signal.SIGTERM)
  rest = proc.stderr.read()
  proc.wait(timeout=300)
  stderr = "".join(seen) + rest
  assert proc.returncode == errors.EXIT_PREEMPTED == 143, stderr[-3000:]
  steps = sorted(int(p.name.split("_")[1]) for p in model_dir.glob("checkpoint_*"))
  assert steps and steps[-1] >= 2, stderr[-3000:]
  assert (f"prompt_tuning.train: error: Stopped at step {steps[-1]} on SIGTERM after "
          "writing its checkpoint; rerun the same command to resume") in stderr
  assert "Traceback" not in stderr and "Done at step" not in stderr
