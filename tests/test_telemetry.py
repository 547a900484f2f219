"""Prompt telemetry during training: norms, cosine to the start, LoPA gate saturation."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trainer_testlib as tl
from prompt_tuning import train as train_lib
from prompt_tuning.methods import lopa as lopa_lib
from prompt_tuning.methods.prompt import prompt_tuning
from prompt_tuning.run_dir import layout
from prompt_tuning.training import telemetry


def test_prompt_stats_against_numpy():
  rng = np.random.default_rng(0)
  embedding = rng.normal(size=(11, 4)).astype(np.float32)
  start = rng.normal(size=(3, 4)).astype(np.float32)
  bank = rng.normal(size=(2, 2, 4)).astype(np.float32)
  now = {"encoder": {"prompt": {"prompt": 2.0 * start, "other": np.ones((3, 4))}},
         "shared": {"prompt": {"prompts": bank}}}
  initial = {"encoder/prompt/prompt": start, "shared/prompt/prompts": -bank}
  out = telemetry.prompt_stats(now, initial, embedding)
  vectors = np.concatenate([2.0 * start, bank.reshape(-1, 4)])  # `other` is no prompt
  norm = np.mean(np.linalg.norm(vectors, axis=-1))
  embedding_norm = np.mean(np.linalg.norm(embedding, axis=-1))
  assert out["prompt_norm"] == pytest.approx(norm, rel=1e-5)
  assert out["embedding_norm"] == pytest.approx(embedding_norm, rel=1e-5)
  assert out["prompt_norm_ratio"] == pytest.approx(norm / embedding_norm, rel=1e-5)
  # 3 vectors scaled (cosine 1) and 4 negated (cosine -1).
  assert out["cosine_to_init"] == pytest.approx((3 - 4) / 7, abs=1e-5)
  assert telemetry.prompt_stats({"decoder": {"mlp": start}}, {}, embedding) == {}


def test_lopa_sows_the_saturated_gate_shares_of_its_formula():
  module = lopa_lib.LopaPrompt(length=3, rank=2, hidden_dim=5, features="embeddings")
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8))
  mask = jnp.ones((2, 4), bool)
  params = nn.unbox(module.init(jax.random.PRNGKey(1), x, mask)["params"])
  params = jax.tree.map(lambda p: p * 60.0, params)  # big heads: saturated gates
  _, sown = module.apply({"params": params}, x, mask, mutable=["intermediates"])
  got = telemetry.collected_gates(sown["intermediates"])

  def head(p, v):
    return np.tanh(v @ p["hidden_kernel"] + p["hidden_bias"]) @ p["out_kernel"] + \
        p["out_bias"]
  p = jax.tree.map(np.asarray, params)
  pooled = np.asarray(x).mean(axis=1)
  u = head(p["u_head"], pooled).reshape(2, 3, 2)
  v = head(p["v_head"], pooled).reshape(2, 8, 2)
  gate = 1 / (1 + np.exp(-np.einsum("bpr,bhr->bph", u, v)))
  assert float(got["gate_near_0"]) == pytest.approx(np.mean(gate < 0.05))
  assert float(got["gate_near_1"]) == pytest.approx(np.mean(gate > 0.95))
  assert 0 < float(got["gate_near_0"]) + float(got["gate_near_1"]) <= 1


def _train(model_dir, method, steps=3):
  return train_lib.build_and_train(
      tl.train_config(model_dir, train_steps=steps, log_period=1),
      method=method, model_config=tl.tiny_config(), optimizer=tl.adam(0.3),
      batches_fn=tl.fixed_batches(8))


def _tags(directory):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tags = set()
  for path in directory.glob("events.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      tags.update(v.tag for v in event.summary.value)
  return tags


def test_a_prompt_run_logs_its_telemetry_to_metrics_jsonl_and_tensorboard(tmp_path):
  result = _train(tmp_path, prompt_tuning(length=3))
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  seen = [l for l in lines if l["task"] == "telemetry"]
  assert [l["step"] for l in seen] == [1, 2, 3]
  assert layout.evaluations(tmp_path) == []  # telemetry lines are no evaluations
  final = result.trainable["encoder"]["prompt"]["prompt"]
  assert seen[-1]["prompt_norm"] == pytest.approx(
      np.mean(np.linalg.norm(final, axis=-1)), rel=1e-4)
  # The prompt moves away from its start (lr 0.3): the cosine falls from ~1.
  cosines = [l["cosine_to_init"] for l in seen]
  assert 0.0 < cosines[-1] < cosines[0] <= 1.0 + 1e-6
  assert all(l["embedding_norm"] > 0 and l["prompt_norm_ratio"] == pytest.approx(
      l["prompt_norm"] / l["embedding_norm"], rel=1e-5) for l in seen)
  assert {"telemetry/prompt_norm", "telemetry/cosine_to_init",
          "telemetry/prompt_norm_ratio"} <= _tags(tmp_path / "train")


def test_a_lopa_run_logs_gate_saturation(tmp_path):
  _train(tmp_path, lopa_lib.lopa(length=2, rank=1, hidden_dim=4,
                                 features="embeddings"), steps=2)
  seen = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  seen = [l for l in seen if l["task"] == "telemetry"]
  assert len(seen) == 2
  for line in seen:
    assert 0.0 <= line["gate_near_0"] <= 1.0 and 0.0 <= line["gate_near_1"] <= 1.0
    assert line["gate_near_0"] + line["gate_near_1"] <= 1.0
    assert "cosine_to_init" in line  # Z_S is a prompt too
  assert {"telemetry/gate_near_0", "telemetry/gate_near_1"} <= _tags(tmp_path / "train")
