"""Decoder-only models through the real entry points, in process: train → eval → infer.

Tiny random GPT-2 and Llama checkpoints are written by transformers'
`save_pretrained` and read as INITIAL_CHECKPOINT_PATH; the task is a local JSONL
task tokenized with the bundled tiny SentencePiece vocabulary (484 ids, inside the
models' 512). Each case trains a few steps with the repo's gin files
(`train.train`), evaluates the MODEL_DIR (`eval.evaluate`) and serves its
validation split (`infer.infer`); the gin state is restored by conftest.
"""
import json
import pathlib

import gin
import numpy as np
import pytest

from prompt_tuning import cli, train
from prompt_tuning import eval as eval_lib
from prompt_tuning import infer as infer_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TASK = "tasks.local.register_local_task"
WORDS = ["red", "blue", "green", "dog", "cat", "car", "tree", "house"]


def _write_task(root: pathlib.Path) -> None:
  """Copy-the-last-word examples: learnable, with free-text predictions."""
  rng = np.random.RandomState(0)
  for split, n in (("train", 16), ("validation", 6)):
    with open(root / f"{split}.jsonl", "w") as f:
      for _ in range(n):
        words = list(rng.choice(WORDS, 3))
        f.write(json.dumps({"inputs": "the " + " ".join(words),
                            "targets": words[-1]}) + "\n")


@pytest.fixture(scope="module")
def hf_checkpoints(tmp_path_factory):
  """{family: directory} of tiny random transformers models (sizes of the tiny
  gin presets)."""
  root = tmp_path_factory.mktemp("hf_decoders")
  torch.manual_seed(0)
  models = {
      "gpt2": transformers.GPT2LMHeadModel(transformers.GPT2Config(
          vocab_size=512, n_positions=128, n_embd=32, n_layer=2, n_head=4,
          initializer_range=0.2, bos_token_id=0, eos_token_id=1)),
      "llama": transformers.LlamaForCausalLM(transformers.LlamaConfig(
          vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
          initializer_range=0.2, rms_norm_eps=1e-5, tie_word_embeddings=False,
          bos_token_id=0,
          eos_token_id=1)),
  }
  out = {}
  for family, model in models.items():
    model.save_pretrained(root / family)
    out[family] = root / family
  return out


def _common(root: pathlib.Path, family: str, checkpoint: pathlib.Path):
  return [
      f"MIXTURE_OR_TASK_NAME=@{TASK}()", f"{TASK}.name='dec_copy'",
      f"{TASK}.train='{root / 'train.jsonl'}'",
      f"{TASK}.validation='{root / 'validation.jsonl'}'",
      "tasks.vocab.vocabulary_path.path = @tiny_t5.vocabulary_path()",
      "TASK_FEATURE_LENGTHS={'inputs': 12, 'targets': 4}",
      f"INITIAL_CHECKPOINT_PATH='{checkpoint}'",
  ]


CASES = {
    # family, method gin, bindings, an export file of the run
    "gpt2_prompt": ("gpt2", "methods/prompt_tuning.gin",
                    ["PROMPT_LENGTH=3"], "transformer.prompt.prompt.npy"),
    "gpt2_prefix": ("gpt2", "methods/prefix_tuning.gin",
                    ["PROMPT_LENGTH=3", "methods.prefix_tuning.hidden_dim=16",
                     "optim.adamw_prefix_tuning.learning_rate=3e-2"], None),
    "llama_lopa": ("llama", "methods/lopa.gin",
                   ["PROMPT_LENGTH=3", "methods.lopa.hidden_dim=16",
                    "methods.lopa.dropout_rate=0.0",
                    "optim.adamw_lopa.learning_rate=3e-2"], "model.prompt.prompt.npy"),
}


def _parse(files, bindings):
  gin.clear_config()
  cli.parse_gin(files, bindings)


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_eval_infer(tmp_path, hf_checkpoints, case):
  family, method_gin, extra, export = CASES[case]
  _write_task(tmp_path)
  model_dir = tmp_path / "run"
  common = _common(tmp_path, family, hf_checkpoints[family]) + extra
  model_gin = f"models/{family}_tiny.gin"

  # Train: 4 steps, evaluations at 2 and 4.
  _parse([model_gin, method_gin, "runs/prompt_finetune.gin"], common + [
      f"MODEL_DIR='{model_dir}'", "TRAIN_STEPS=4", "EVAL_PERIOD=2",
      "CHECKPOINT_PERIOD=2", "BATCH_SIZE=4", "TrainConfig.eval_batch_size=4",
      "TrainConfig.log_period=2"])
  result = train.train(gin_config=gin.config_str())
  assert result.step == 4 and not result.preempted
  record = json.loads((model_dir / "config.json").read_text())
  assert record["model_config"]["family"] == family
  lines = [json.loads(l) for l in (model_dir / "metrics.jsonl").read_text().splitlines()]
  evals = [l for l in lines if l["task"] == "dec_copy"]
  assert [l["step"] for l in evals] == [2, 4]
  assert {"loss", "z_loss", "sequence_accuracy", "bleu", "num_examples"} <= set(evals[0])
  assert evals[0]["num_examples"] == 6
  assert evals[1]["loss"] < evals[0]["loss"]  # the same examples, after training
  assert all(np.isfinite(v) for v in result.losses.values())
  if export:
    exported = np.load(model_dir / "numpy_checkpoints" / "checkpoint_4" / export)
    assert exported.shape == (3, 32)
  best = json.loads((model_dir / "best" / "best.json").read_text())
  trained = next(l for l in evals if l["step"] == best["step"])

  # Eval of the MODEL_DIR (best export) reproduces the training-time evaluation.
  _parse([model_gin, method_gin, "runs/prompt_eval.gin"], common + [
      f"MODEL_DIR='{model_dir}'", "EVAL_BATCH_SIZE=4"])
  results = eval_lib.evaluate()
  again = results["dec_copy"]
  np.testing.assert_allclose(again.metrics["loss"], trained["loss"], rtol=1e-5)
  assert again.metrics["sequence_accuracy"] == trained["sequence_accuracy"]
  assert len(again.predictions) == 6

  # Infer serves the validation split: one row per input, in order, with the
  # evaluation's predictions (the same greedy continuation).
  out = tmp_path / "predictions.jsonl"
  _parse(["runs/prompt_infer.gin"], common + [
      f"MODEL_DIR='{model_dir}'", "INFER_BATCH_SIZE=4"])
  summary = infer_lib.infer(output_file=str(out))
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert summary.predictions == len(rows) == 6 and summary.errors == 0
  assert [r["inputs"] for r in rows] == again.inputs
  assert [r["prediction"] for r in rows] == list(again.predictions)
  if case == "gpt2_prompt":
    _check_prompt_bank(tmp_path, common, model_gin, model_dir, rows)


def _check_prompt_bank(tmp_path, common, model_gin, model_dir, served):
  """Two copies of the best prompt file served in one bank (mixed batches of
  requests) answer each request as the MODEL_DIR did."""
  best = str(model_dir / "best" / "transformer.prompt.prompt.npy")
  requests = tmp_path / "requests.jsonl"
  requests.write_text("".join(
      json.dumps({"prompt": "ab"[i % 2], "inputs": r["inputs"]}) + "\n"
      for i, r in enumerate(served)))
  out = tmp_path / "bank.jsonl"
  _parse([model_gin, "runs/prompt_infer.gin"], common + [
      f"PROMPT_FILES={{'a': '{best}', 'b': '{best}'}}", "INFER_BATCH_SIZE=4"])
  infer_lib.infer(input_file=str(requests), output_file=str(out))
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert [r["prompt"] for r in rows] == ["a", "b"] * 3
  assert [r["prediction"] for r in rows] == [r["prediction"] for r in served]
