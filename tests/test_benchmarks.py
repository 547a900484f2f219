"""Benchmarks: the FLOP formula, the statistics, and the runner's output structure.

No timing is asserted anywhere: the quick run only checks that every section,
field and ratio is written (finite and positive) and that the markdown says what
was run and where.
"""
import functools
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common, flops, weights
from benchmarks.worker import Worker, WorkerError
from prompt_tuning import params as params_lib
from prompt_tuning.training import losses, optim, trainer
from prompt_tuning.methods import prompt as prompt_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dot_flops(jaxpr) -> float:
  """2 * output size * contracted size, summed over every dot_general (recursively)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod(
          [lhs[d] for d in lhs_contract])
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += _dot_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += _dot_flops(sub)
  return total


def test_flop_formula_counts_exactly_the_traced_matmuls_of_a_prompt_tuning_step():
  shapes = common.Shapes(preset="tiny", overrides={"vocab_size": 64, "dropout_rate": 0.0},
                         batch=2, inputs=5, prompt=3, targets=4)
  config = shapes.model_config()
  method = prompt_lib.prompt_tuning(length=shapes.prompt)
  model = method.build(config)
  params = jax.eval_shape(lambda rng: nn.unbox(model.init(
      rng, jnp.ones((1, 8), jnp.int32), jnp.ones((1, 4), jnp.int32))["params"]),
                          jax.random.PRNGKey(0))  # shapes are all the trace needs
  trainable, frozen = params_lib.split(params, method.trainable)
  optimizer = optim.adafactor_prompt_tuning()
  state = trainer.TrainState(jax.ShapeDtypeStruct((), jnp.int32), trainable,
                             jax.eval_shape(optimizer.init, trainable))
  batch = {k: jnp.asarray(v) for k, v in weights.batch(shapes, 64).items()}
  step = functools.partial(trainer.train_step, loss_fn=losses.LossFn(model, 1e-4, None, False), optimizer=optimizer)
  traced = _dot_flops(jax.make_jaxpr(step)(state, frozen, batch,
                                           jax.random.PRNGKey(1)).jaxpr)
  counted = flops.train_step_flops(shapes)
  assert counted["total"] == pytest.approx(traced, rel=1e-9)
  assert counted["forward"] < counted["total"] < 3 * counted["forward"]
  # Model tuning adds a weight gradient per frozen-weight matmul.
  assert (flops.train_step_flops(shapes, weight_gradients=True)["total"] >
          counted["total"])


def test_ratio_is_of_medians_with_paired_spread():
  stats = common.summarize([2.0, 4.0, 3.0])
  assert (stats["median"], stats["min"], stats["max"]) == (3.0, 2.0, 4.0)
  assert stats["spread"] == pytest.approx(2 / 3)
  r = common.ratio([2.0, 4.0, 3.0], [1.0, 1.0, 2.0])
  assert r["value"] == pytest.approx(3.0)
  assert (r["min"], r["max"]) == (1.5, 4.0)


def test_worker_error_names_the_contender_and_the_cause():
  with Worker("benchmarks.no_such_module:Nothing", {}, name="ghost") as worker:
    with pytest.raises(WorkerError, match="ghost.*no_such_module"):
      worker.request("ready")


def _leaves(tree, path=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, f"{path}/{k}")
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      yield from _leaves(v, f"{path}/{i}")
  else:
    yield path, tree


def test_quick_run_writes_every_section_with_finite_positive_ratios(tmp_path):
  out = tmp_path / "results"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "benchmarks/run_all.py", "--quick", "--out",
                  str(out)], cwd=REPO, env=env, check=True, timeout=900,
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  sections = ("train_step", "limit", "methods")
  for name in sections + ("summary", "raw", "decoding"):
    assert (out / f"{name}.json").is_file(), name
  results = {n: json.loads((out / f"{n}.json").read_text())[n] for n in sections}
  summary = json.loads((out / "summary.json").read_text())
  meta, decoding = summary["meta"], summary["decoding"]
  assert meta["quick"] and "--quick" in meta["command"]
  assert meta["machine"]["cpu"] and meta["machine"]["usable_cores"] >= 1
  assert meta["machine"]["versions"]["jax"] == jax.__version__

  train = results["train_step"]
  ratios = [train["ours_vs_peft"][k] for k in ("peak_memory_ratio",
                                                "steady_memory_ratio")]
  ratios += [train[k]["tokens_per_second_ratio"]["value"]
             for k in ("ours_vs_peft", "nodrop_vs_ours")]
  ratios += [results["limit"][n]["efficiency"]["value"] for n in ("ours", "ours_nodrop")]
  ratios += [decoding[k]["value"] for k in ("tokens_per_second_ratio",
                                            "mixed_vs_single_ratio")]
  ratios += [row["time_ratio_to_model_tuning"]["value"]
             for row in results["methods"].values()]
  assert all(math.isfinite(r) and r > 0 for r in ratios), ratios
  assert set(results["methods"]) == {"prompt", "prefix", "lopa", "model"}
  assert results["methods"]["model"]["time_ratio_to_model_tuning"]["value"] == 1.0
  for side in ("ours", "ours_nodrop", "peft"):
    assert len(train[side]["step_seconds"]["samples"]) == meta["shapes"]["reps"]
    assert train[side]["peak_mib"] > 0 and train[side]["first_step_seconds"] > 0
  assert train["ours"]["compile_seconds"] > 0
  # The analytic FLOP count and XLA's agree to within elementwise work.
  limit = results["limit"]
  assert 0.5 < limit["xla_flops"] / limit["step_flops"]["total"] < 2.0
  # Both frameworks trained the same prompt on the same weights: the same trainable
  # prompt (PEFT allocates a second, unused copy for the decoder), and the greedy
  # decoders produced the same tokens.
  assert train["peft"]["num_trainable"] == 2 * train["ours"]["num_trainable"]
  assert decoding["token_agreement"] == 1.0
  # The decoding profile: both encoders timed, a per-token time and its floor
  # (the bytes every step reads over a measured read rate).
  loop = decoding["decode_loop"]
  assert loop["bytes_per_step"] > 0
  assert all(loop[k] > 0 for k in ("ours_encoder_s", "hf_encoder_s",
                                   "read_gb_per_s", "floor_step_ms"))
  assert math.isfinite(loop["ours_step_ms"]) and math.isfinite(loop["hf_step_ms"])
  for path, value in _leaves(results):
    if isinstance(value, float):
      assert math.isfinite(value), path

  targets = summary["targets"]
  assert len(targets) == 5 and all(isinstance(t["met"], bool) for t in targets)
  markdown = (out / "RESULTS.md").read_text()
  for heading in ("## Machine", "## Targets", "## Train step", "## Distance to the limit",
                  "## Step cost by method", "## Greedy decoding",
                  "Where a greedy batch's time goes"):
    assert heading in markdown
  assert meta["command"] in markdown and meta["machine"]["cpu"] in markdown
