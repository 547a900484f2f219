"""Optimizer state is sharded like its parameters (explicitly), and no method's
compiled step all-gathers a trainable parameter or its optimizer state."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import opt_sharding_worker
from prompt_tuning import partitioning
from prompt_tuning.training import opt_state_sharding, optim

WORKER = pathlib.Path(opt_sharding_worker.__file__)
REPO = WORKER.parents[1]


def _specs(tree):
  return jax.tree_util.tree_map(lambda s: tuple(s.spec), tree,
                                is_leaf=lambda x: isinstance(x, NamedSharding))


def test_slots_follow_their_parameter_and_factored_slots_drop_the_right_axis():
  mesh = partitioning.make_mesh(1)
  params = {"a": {"kernel": jnp.zeros((16, 32))},  # [embed, mlp]
            "b": {"out": jnp.zeros((8, 3, 2, 12))},  # [mlp, layers, kv_pair, heads]
            "c": {"scale": jnp.zeros((16,))}}
  shardings = {"a": {"kernel": NamedSharding(mesh, PartitionSpec(None, "model"))},
               "b": {"out": NamedSharding(mesh, PartitionSpec("data", None, None,
                                                              "model"))},
               "c": {"scale": NamedSharding(mesh, PartitionSpec())}}
  factored = optim.adafactor(factored=True, min_dim_size_to_factor=4)
  state = factored.init(params)
  specs = opt_state_sharding.opt_state_shardings(factored, params, shardings, mesh)
  # The layout's tree is the state's tree, leaf for leaf.
  assert (jax.tree_util.tree_structure(state) ==
          jax.tree_util.tree_structure(specs, is_leaf=lambda x: isinstance(
              x, NamedSharding)))
  by_shape = {}
  for path, (leaf, sharding) in zip(
      [p for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]],
      zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(specs))):
    by_shape[(jax.tree_util.keystr(path).split(".")[-1].split("[")[0],
              tuple(leaf.shape))] = tuple(sharding.spec)
  # v_row drops the largest dimension, v_col the second largest (optax's choice).
  assert by_shape[("v_row", (16,))] == (None,)
  assert by_shape[("v_col", (32,))] == ("model",)
  assert by_shape[("v_row", (8, 3, 2))] == ("data", None, None)  # drops heads (12)
  assert by_shape[("v_col", (3, 2, 12))] == (None, None, "model")  # drops mlp (8)
  assert by_shape[("v", (16,))] == ()  # unfactored: like its (replicated) parameter
  # Adam: mu and nu exactly like the parameter; the step count replicated.
  adam = optax.adamw(1e-3)
  adam_specs = _specs(opt_state_sharding.opt_state_shardings(adam, params, shardings,
                                                             mesh))
  mu = adam_specs[0].mu
  assert mu["a"]["kernel"] == (None, "model")
  assert mu["b"]["out"] == ("data", None, None, "model")
  assert adam_specs[0].count == ()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
  out = tmp_path_factory.mktemp("opt_sharding") / "hlo.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=os.pathsep.join([str(REPO), str(WORKER.parent)]))
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, str(WORKER), str(out)], env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-4000:]
  return json.loads(out.read_text())


def _gathered_state(result):
  """Full shapes of sharded trainable/state leaves that the HLO all-gathers."""
  sharded = {"f32[" + ",".join(map(str, leaf["shape"])) + "]"
             for leaf in result["trainable"] + result["opt_state"]}
  return sorted(sharded & set(result["gathered"]))


@pytest.mark.parametrize("method", ["prompt", "prefix", "lopa", "model"])
def test_no_method_step_all_gathers_trainable_parameters_or_state(compiled, method):
  result = compiled[method]
  assert _gathered_state(result) == [], result["gathered"]
  if method in ("prefix", "model"):  # model-parallel trainables
    assert result["trainable"] and result["opt_state"]
    assert any("model" in leaf["spec"] for leaf in result["opt_state"])


def test_the_check_catches_xla_s_replicated_prefix_adam_state(compiled):
  """Prefix tuning's Adam mu/nu as XLA laid them out before: gathered every step."""
  guess = compiled["prefix_xla_guess"]
  assert guess["opt_state"] == []  # replicated
  assert _gathered_state(guess)  # ... and all-gathered in the step
