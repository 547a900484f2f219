"""building.py: the parameter tree of a method on a frozen model, placed on a mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import building, checkpoints, partitioning
from prompt_tuning.methods.prompt import prompt_tuning
from prompt_tuning.params import flatten

from methods_testlib import tiny_config


def _mesh():
  return partitioning.make_mesh(1, devices=jax.devices()[:1])


def test_random_build_places_every_leaf_and_keeps_trainables_float32():
  method = prompt_tuning(length=3)
  config = tiny_config(frozen_dtype="bfloat16")
  used, params, shardings = building.build_params(method, config, None,
                                                  jax.random.PRNGKey(0), mesh=_mesh())
  flat, flat_shardings = flatten(params), flatten(shardings)
  assert set(flat) == set(flat_shardings) and used == config
  for path, value in flat.items():
    assert isinstance(value, jax.Array) and value.sharding == flat_shardings[path]
    want = jnp.float32 if method.is_trainable(path) else jnp.bfloat16
    assert value.dtype == want, path
  assert flat["encoder/prompt/prompt"].shape == (3, config.emb_dim)


def test_checkpoint_values_are_the_loaded_ones(tmp_path):
  method = prompt_tuning(length=2)
  config = tiny_config()
  _, random, _ = building.build_params(method, config, None, jax.random.PRNGKey(1))
  frozen = {p: v for p, v in flatten(random).items() if not method.is_trainable(p)}
  checkpoints.save(tmp_path / "ck", frozen, config)
  _, loaded, _ = building.build_params(method, config, str(tmp_path / "ck"),
                                       jax.random.PRNGKey(2))
  for path, value in frozen.items():
    np.testing.assert_array_equal(flatten(loaded)[path], value)
  # The prompt is not in the checkpoint: initialized by the method, not loaded.
  assert not np.array_equal(flatten(loaded)["encoder/prompt/prompt"],
                            flatten(random)["encoder/prompt/prompt"])


def test_cast_frozen_leaves_trainables_and_integers_alone():
  method = prompt_tuning(length=2)
  flat = {"encoder/prompt/prompt": np.ones((2, 4), np.float32),
          "token_embedder/embedding": np.ones((8, 4), np.float32),
          "some/int": np.ones((3,), np.int32),
          "abstract/kernel": jax.ShapeDtypeStruct((4, 4), jnp.float32)}
  building.cast_frozen(flat, method, jnp.bfloat16)
  assert flat["encoder/prompt/prompt"].dtype == np.float32
  assert flat["token_embedder/embedding"].dtype == jnp.bfloat16
  assert flat["some/int"].dtype == np.int32
  assert flat["abstract/kernel"].dtype == jnp.bfloat16


def test_apply_exported_sets_by_dotted_name_and_names_mismatches():
  params = {"encoder": {"prompt": {"prompt": np.zeros((2, 4), np.float32)}}}
  out = building.apply_exported(params, {"encoder.prompt.prompt": np.ones((2, 4))})
  np.testing.assert_array_equal(out["encoder"]["prompt"]["prompt"], np.ones((2, 4)))
  assert out["encoder"]["prompt"]["prompt"].dtype == np.float32
  with pytest.raises(building.ExportMismatchError,
                     match=r"x: encoder\.prompt\.prompt\.npy has shape \(3, 4\), "
                     r"expected \(2, 4\)"):
    building.apply_exported(params, {"encoder.prompt.prompt": np.ones((3, 4))}, "x")
  with pytest.raises(building.ExportMismatchError, match="does not have"):
    building.apply_exported(params, {"decoder.prefix": np.ones((3, 4))})
