"""This project's own checkpoint format: orbax params + config.json."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import checkpoints
from prompt_tuning.checkpoints import tree
from prompt_tuning.models import config as config_lib

SMALL = config_lib.preset("tiny").replace(
    vocab_size=64, relative_attention_max_distance=20, dtype=jnp.bfloat16,
    dropout_rate=0.05, layer_norm_epsilon=1e-5)


@pytest.fixture(scope="module")
def params():
  rng = np.random.default_rng(0)
  out = {}
  for name, shape in tree.expected_shapes(SMALL).items():
    node = out
    *parents, last = name.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[last] = rng.normal(size=shape).astype(np.float32)
  return out


def test_save_then_load_roundtrips_params_and_config(tmp_path, params):
  path = checkpoints.save(tmp_path / "model", params, SMALL)
  assert checkpoints.detect_format(path) == "native"
  assert json.loads((path / "config.json").read_text()) == SMALL.to_dict()
  config, loaded = checkpoints.load(path)
  assert config == SMALL  # including max distance, epsilon, dropout and dtype
  flat = jax.tree_util.tree_leaves_with_path(params)
  loaded_flat = dict(jax.tree_util.tree_leaves_with_path(loaded))
  assert len(loaded_flat) == len(flat)
  for key, value in flat:
    assert loaded_flat[key].dtype == np.float32
    np.testing.assert_array_equal(loaded_flat[key], value)


def test_save_refuses_to_overwrite_unless_asked(tmp_path, params):
  path = checkpoints.save(tmp_path / "model", params, SMALL)
  with pytest.raises(checkpoints.CheckpointError, match="overwrite=True"):
    checkpoints.save(path, params, SMALL)
  doubled = jax.tree_util.tree_map(lambda x: 2 * x, params)
  checkpoints.save(path, doubled, SMALL, overwrite=True)
  _, loaded = checkpoints.load(path)
  np.testing.assert_array_equal(loaded["token_embedder"]["embedding"],
                                2 * params["token_embedder"]["embedding"])


def test_config_checks(tmp_path, params):
  path = checkpoints.save(tmp_path / "model", params, SMALL)
  with pytest.raises(checkpoints.ConfigMismatchError) as info:
    checkpoints.load(path, SMALL.replace(num_heads=8, layer_norm_epsilon=1e-6))
  assert "num_heads: config has 8, checkpoint has 4" in str(info.value)
  assert "layer_norm_epsilon: config has 1e-06, checkpoint has 1e-05" in str(info.value)
  config, _ = checkpoints.load(path, SMALL.replace(dropout_rate=0.0))
  assert config.dropout_rate == 0.0
  # A config.json that does not describe the stored arrays.
  stored = json.loads((path / "config.json").read_text())
  stored["mlp_dim"] = 96
  (path / "config.json").write_text(json.dumps(stored))
  with pytest.raises(checkpoints.ParameterMismatchError) as info:
    checkpoints.load(path)
  assert "encoder/layers_0/mlp/wi_0/kernel: expected (32, 96), found (32, 64)" in str(
      info.value)
  stored["mlp_size"] = stored.pop("mlp_dim")
  (path / "config.json").write_text(json.dumps(stored))
  with pytest.raises(checkpoints.CheckpointError, match="mlp_size"):
    checkpoints.load(path)
