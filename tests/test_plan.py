"""The memory planner (`python -m prompt_tuning.plan`) on the tiny model.

Its parameter numbers are checked against bytes counted by hand from the T5.1.1
shapes and T5X's 1-D rules; the remat and bfloat16 settings must move the numbers
the way they should.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import optax
import pytest

import methods_testlib as ml
from prompt_tuning import partitioning, plan
from prompt_tuning.methods import prompt
from prompt_tuning.models.config import preset
from prompt_tuning.training import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]


def frozen_bytes_by_hand(cfg, model_ways: int, itemsize: int = 4) -> int:
  """Per-device bytes of a T5.1.1's parameters, `vocab`/`heads`/`joined_kv`/`mlp`
  split `model_ways` ways (T5X's 1-D rules; every size here divides)."""
  h, v, f, n = cfg.emb_dim, cfg.vocab_size, cfg.mlp_dim, cfg.num_heads
  nd = cfg.num_heads * cfg.head_dim
  attention = 4 * h * nd / model_ways  # query, key, value [H, N*D]; out [N*D, H]
  mlp = 3 * h * f / model_ways  # wi_0, wi_1 [H, F]; wo [F, H]
  relpos = n * cfg.relative_attention_num_buckets / model_ways
  encoder = cfg.num_encoder_layers * (2 * h + attention + mlp) + relpos + h
  decoder = cfg.num_decoder_layers * (3 * h + 2 * attention + mlp) + relpos + h
  embeddings = 2 * v * h / model_ways  # token_embedder and logits_dense
  return int((encoder + decoder + embeddings) * itemsize)


def test_plan_command_on_four_simulated_devices():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  out = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.plan", "--gin_file=models/t5_1_1_tiny.gin",
       "--gin_file=methods/prompt_tuning.gin", "--gin_file=runs/prompt_finetune.gin",
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}",
       "--gin.BATCH_SIZE=4", "--gin.PROMPT_LENGTH=5", "--devices=4", "--mesh=2,2",
       "--memory_gb=0.001", "--json"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout)
  cfg = preset("tiny")
  b = result["bytes_per_device"]
  assert result["devices"] == 4 and result["mesh"] == {"data": 2, "model": 2}
  assert result["prompt_length"] == 5 and result["model"] == "tiny"
  assert b["frozen"] == frozen_bytes_by_hand(cfg, model_ways=2)
  assert b["trainable"] == 5 * cfg.emb_dim * 4  # the prompt [P, H], replicated
  # Adafactor on a [5, 32] prompt: unfactored second moment (+ scalars).
  assert 5 * cfg.emb_dim * 4 <= b["optimizer_state"] < 2 * 5 * cfg.emb_dim * 4
  assert b["batch"] == 2 * (16 + 3 * 4) * 4  # 2 of 4 rows per data shard, int32
  assert b["saved_residuals"] > 0 and b["xla_temp"] > 0
  assert b["estimate"] == (b["frozen"] + b["trainable"] + b["optimizer_state"] +
                           b["batch"] + b["saved_residuals"] + b["recompute"])
  assert result["fits"] is False  # 1 MiB cannot hold the 2 MiB embedding shards


def _plan(config, memory_gb=None):
  method = prompt.prompt_tuning(length=4)
  train_config = trainer.TrainConfig(model_dir="/nonexistent", mixture_or_task_name="x",
                                     task_feature_lengths={}, train_steps=1,
                                     batch_size=2)
  mesh = partitioning.make_mesh(1, devices=jax.devices()[:1])
  return plan.plan(config, method, optax.adam(1e-3), train_config,
                   {"inputs": 8, "targets": 4}, mesh, partitioning.rules(), memory_gb)


def test_remat_and_bfloat16_move_the_plan_as_they_should():
  base = ml.one_layer_config()
  plain = _plan(base, memory_gb=1.0)
  b = plain["bytes_per_device"]
  assert b["frozen"] == frozen_bytes_by_hand(base, model_ways=1)
  assert b["recompute"] == 0 and plain["fits"] is True
  assert b["trainable"] == 4 * base.emb_dim * 4
  assert b["optimizer_state"] >= 2 * b["trainable"]  # Adam's mu and nu
  bf16 = _plan(base.replace(frozen_dtype="bfloat16"))["bytes_per_device"]
  assert bf16["frozen"] * 2 == b["frozen"]
  assert bf16["trainable"] == b["trainable"]
  assert bf16["optimizer_state"] == b["optimizer_state"]
  full = _plan(base.replace(remat_policy="full"))["bytes_per_device"]
  assert full["saved_residuals"] < b["saved_residuals"]
  assert 0 < full["recompute"] == full["largest_layer_residuals"]
  assert full["estimate"] < b["estimate"] + full["recompute"]


def test_plan_reexecs_with_the_requested_device_count(monkeypatch):
  calls = []
  monkeypatch.setattr(os, "execve", lambda exe, argv, env: calls.append((argv, env)))
  monkeypatch.delenv(plan._GUARD, raising=False)  # pylint: disable=protected-access
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 --foo")
  plan.reexec_with_devices(["plan", "--devices", "16", "--json"])
  (argv, env), = calls
  assert argv[1:] == ["-m", "prompt_tuning.plan", "--devices", "16", "--json"]
  assert env["XLA_FLAGS"].split() == ["--foo",
                                      "--xla_force_host_platform_device_count=16"]
  assert env["JAX_PLATFORMS"] == "cpu"
  monkeypatch.setenv(plan._GUARD, "16")  # pylint: disable=protected-access
  plan.reexec_with_devices(["plan", "--devices=16"])
  assert len(calls) == 1  # already re-executed: no loop
  with pytest.raises(ValueError):
    plan.reexec_with_devices(["plan", "--devices=many"])


def test_decoder_only_plan_counts_parameters_and_the_one_sequence_batch():
  """A Llama-family gin plans: frozen bytes = the parameter count (halved in
  bfloat16), the batch is one sequence of inputs + targets, P from the model."""
  import decoder_testlib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.decoder_config import llama_preset  # pylint: disable=g-import-not-at-top
  config = llama_preset("tiny", hidden_size=24, num_attention_heads=6,
                        num_key_value_heads=2, vocab_size=97)
  result = _plan(config, memory_gb=1.0)
  b = result["bytes_per_device"]
  assert result["model"] == "custom" and result["prompt_length"] == 4
  assert b["trainable"] == 4 * 24 * 4
  assert b["frozen"] == (decoder_testlib.parameter_count(config) - 0) * 4
  assert b["batch"] == 4 * 2 * (8 + 4) * 4  # 4 features [2, 12] int32
  assert b["saved_residuals"] > 0 and b["recompute"] == 0 and result["fits"] is True
  bf16 = _plan(config.replace(frozen_dtype="bfloat16"))["bytes_per_device"]
  assert bf16["frozen"] * 2 == b["frozen"]
  assert _plan(llama_preset("tiny"))["model"] == "tiny"
