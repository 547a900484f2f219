"""The parameter tree: flatten, get/with/without, T5X regex matching, split/merge."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from prompt_tuning import params


def _tree():
  return {"encoder": {"prompt": {"prompt": np.ones((3, 4))},
                      "layers_0": {"mlp": {"wi": np.zeros((4, 8))}}},
          "token_embedder": {"embedding": np.arange(8.0).reshape(2, 4)}}


def test_flatten_and_unflatten_are_inverse_with_slash_paths():
  flat = params.flatten(_tree())
  assert sorted(flat) == ["encoder/layers_0/mlp/wi", "encoder/prompt/prompt",
                          "token_embedder/embedding"]
  assert jax.tree.structure(params.unflatten(flat)) == jax.tree.structure(_tree())


def test_get_param_unboxes_and_names_the_missing_key():
  tree = {"a": {"b": nn.Partitioned(np.ones(2), names=("embed",))}}
  np.testing.assert_array_equal(params.get_param(tree, "a/b"), np.ones(2))
  with pytest.raises(KeyError, match="'a/c'.*'c'"):
    params.get_param(tree, "a/c")


def test_with_and_without_params_copy_and_leave_the_input_alone():
  tree = _tree()
  added = params.with_params(tree, {"decoder/prefix/key": np.zeros(1)})
  assert "decoder" not in tree and params.get_param(added, "decoder/prefix/key").shape == (1,)
  dropped = params.without_params(tree, "encoder/prompt")
  assert "prompt" in tree["encoder"] and "prompt" not in dropped["encoder"]
  same = params.without_params(tree, "nothing/here")
  assert same is not tree and jax.tree.structure(same) == jax.tree.structure(tree)


def test_matches_is_a_full_match_as_in_t5x():
  assert params.matches("encoder/prompt/prompt", [r".*/prompt/.*"])
  assert not params.matches("encoder/prompt/prompt", [r"prompt"])  # search would match
  assert not params.matches("encoder/prompt/prompt", [])


def test_split_and_merge_round_trip_nested_trees():
  tree = _tree()
  trainable, frozen = params.split(tree, [r".*/prompt/.*"])
  assert list(params.flatten(trainable)) == ["encoder/prompt/prompt"]
  assert len(params.flatten(frozen)) == 2
  merged = params.merge(trainable, frozen)
  for path, value in params.flatten(tree).items():
    assert params.get_param(merged, path) is value
  # Flat halves merge to the same tree.
  flat_merged = params.merge(params.flatten(trainable), params.flatten(frozen))
  assert jax.tree.structure(flat_merged) == jax.tree.structure(tree)


def test_split_refuses_regexes_that_match_nothing_or_a_bare_string():
  with pytest.raises(ValueError, match=r"decoder/nothing/\.\*"):
    params.split(_tree(), [r"decoder/nothing/.*"])
  with pytest.raises(ValueError, match="list"):
    params.split(_tree(), r".*/prompt/.*")
  trainable, frozen = params.split(_tree(), [])  # no regexes: everything frozen
  assert not trainable and len(params.flatten(frozen)) == 3


def test_merge_refuses_overlap():
  with pytest.raises(ValueError, match="both"):
    params.merge({"a/b": 1}, {"a": {"b": 2}})
