"""The adapter methods from the command line: train a few steps with a method gin,
then eval the MODEL_DIR and get the same evaluation (the exports load back).

LoRA stands for the `adapter` hook here (IA3 and per-layer prompts use the same
path through train / export / eval and are tested in-process); each case costs two
subprocesses, so the list is kept short."""
import functools
import json

import jax
import numpy as np
import pytest

from prompt_tuning import checkpoints
from prompt_tuning.checkpoints import peft_adapters
from prompt_tuning import params as base
from prompt_tuning.methods.lora import lora
from prompt_tuning.models.config import T5Config

from conftest import T5X_TINY_CHECKPOINT, load_script
from methods_testlib import batch, loss
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

  if name == "lora":
    _check_export_adapter(model_dir, best_dir, tmp_path)


def _check_export_adapter(model_dir, best_dir, tmp_path):
  """scripts/export_adapter.py: the PEFT adapter holds the best export's factors
  with the run's alpha; the merged T5 gives the adapted model's loss."""
  script = load_script("export_adapter")
  assert script.main([str(model_dir), str(tmp_path / "peft")]) == 0
  record = json.loads((model_dir / "config.json").read_text())
  config = T5Config.from_dict(record["model_config"])
  factors, settings = peft_adapters.load_lora(tmp_path / "peft", config)
  assert settings["alpha"] == record["adapter"]["alpha"] == 8.0
  for path, value in factors.items():
    np.testing.assert_array_equal(value, np.load(best_dir / f"{path.replace('/', '.')}.npy"))
  assert script.main([str(model_dir), str(tmp_path / "merged"), "--merged"]) == 0
  _, frozen = checkpoints.load(str(T5X_TINY_CHECKPOINT), config=config)
  _, merged = checkpoints.load(str(tmp_path / "merged"))
  method = lora(rank=settings["rank"], alpha=settings["alpha"])
  enc, dec, tgt = batch(inputs=9, targets=4)
  enc, dec, tgt = (np.minimum(x, 100) for x in (enc, dec, tgt))
  adapted = jax.jit(functools.partial(loss, method.build(config)))(
      base.with_params(frozen, factors), enc, dec, tgt)
  plain = jax.jit(functools.partial(loss, method.build(config).clone(adapter=None)))(
      merged, enc, dec, tgt)
  np.testing.assert_allclose(float(plain), float(adapted), rtol=1e-5)
  assert script.main([str(model_dir), str(tmp_path / "x"), "--checkpoint", "7"]) == 1
