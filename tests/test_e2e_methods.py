"""The adapter methods from the command line: train a few steps with a method gin,
then eval the MODEL_DIR and get the same evaluation (the exports load back).

LoRA stands for the `adapter` hook here (IA3 and per-layer prompts use the same
path through train / export / eval and are tested in-process); each case costs two
subprocesses, so the list is kept short."""
import json

import numpy as np
import pytest

from test_e2e import _common, _run, _write_task


@pytest.mark.parametrize("gin_file, name, exported", [
    ("methods/lora.gin", "lora", "encoder.layers_0.attention.query.lora_b.npy"),
])
def test_train_then_eval_reproduces_the_best_evaluation(tmp_path, shared_fixtures,
                                                        gin_file, name, exported):
  del shared_fixtures
  _write_task(tmp_path)
  model_dir = tmp_path / "run"
  common = _common(tmp_path) + [f"--gin_file={gin_file}"]
  _run("prompt_tuning.train", ["--gin_file=runs/prompt_finetune.gin"] + common + [
      f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=2", "--gin.EVAL_PERIOD=2",
      "--gin.CHECKPOINT_PERIOD=2", "--gin.BATCH_SIZE=4"])
  record = json.loads((model_dir / "config.json").read_text())
  assert record["method"] == name
  best_dir = model_dir / "best"
  assert (best_dir / exported).is_file()
  if name == "lora":  # B started at zero and moved
    assert np.any(np.load(best_dir / exported))
  best = json.loads((best_dir / "best.json").read_text())
  lines = [json.loads(l) for l in (model_dir / "metrics.jsonl").read_text().splitlines()]
  trained = next(l for l in lines if l["task"] == "e2e_sentiment" and
                 l["step"] == best["step"])
  _run("prompt_tuning.eval", ["--gin_file=runs/prompt_eval.gin"] + common + [
      "--gin.EVAL_BATCH_SIZE=4", f"--gin.MODEL_DIR='{model_dir}'"])
  again = json.loads((model_dir / "metrics.jsonl").read_text().splitlines()[-1])
  assert again["source"].endswith("best")
  np.testing.assert_allclose(again["loss"], trained["loss"], rtol=1e-5)
