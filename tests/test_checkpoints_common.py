"""Format detection, error messages and the streaming assembly shared by all readers."""
import logging
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import checkpoints
from prompt_tuning.checkpoints import tree
from prompt_tuning.models import config as config_lib
from prompt_tuning.models.t5 import Transformer

SMALL = config_lib.preset("tiny").replace(vocab_size=96)


def _source_from(shapes, make, reads=None):
  """A synthetic Source whose tensors are produced by `make(shape)` when read."""
  def reader(name, shape):
    def read():
      if reads is not None:
        reads.append(name)
      return make(shape)
    return read
  return {name: tree.LazyTensor(shape, reader(name, shape), f"test:{name}")
          for name, shape in shapes.items()}


def test_expected_shapes_is_the_init_tree():
  shapes = tree.expected_shapes(SMALL)
  tokens = jnp.ones((1, 3), jnp.int32)
  params = jax.eval_shape(Transformer(SMALL).init, jax.random.PRNGKey(0), tokens,
                          tokens)["params"]
  flat = {"/".join(k.key for k in path): leaf.value.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(
              params, is_leaf=lambda x: hasattr(x, "value"))[0]}
  assert shapes == flat
  assert shapes["decoder/logits_dense/kernel"] == (32, 96)
  assert shapes["encoder/relpos_bias/rel_embedding"] == (4, 32)


def test_materialize_builds_the_nested_tree_in_float32():
  shapes = tree.expected_shapes(SMALL)
  source = _source_from(shapes, lambda s: np.full(s, 0.5, np.float64))
  params = tree.materialize("mem", source, SMALL)
  assert params["encoder"]["layers_1"]["mlp"]["wo"]["kernel"].shape == (64, 32)
  leaves = jax.tree_util.tree_leaves(params)
  assert len(leaves) == len(shapes)
  assert all(x.dtype == np.float32 and x.flags.c_contiguous for x in leaves)
  assert source == {}  # every lazy tensor was consumed (and released)


def test_shape_and_missing_errors_list_every_parameter_before_reading_anything():
  shapes = dict(tree.expected_shapes(SMALL))
  del shapes["decoder/layers_1/mlp/wo/kernel"]
  del shapes["token_embedder/embedding"]
  shapes["encoder/layers_0/attention/query/kernel"] = (32, 16)
  shapes["decoder/logits_dense/kernel"] = (96, 32)
  reads = []
  source = _source_from(shapes, np.zeros, reads)
  with pytest.raises(checkpoints.ParameterMismatchError) as info:
    tree.materialize("/ckpt", source, SMALL, describe_missing=lambda n: f"<{n}>")
  message = str(info.value)
  assert reads == []  # checked before any read
  assert "2 parameter(s) missing" in message
  assert "decoder/layers_1/mlp/wo/kernel: expected shape (64, 32), not found" in message
  assert "token_embedder/embedding: expected shape (96, 32)" in message
  assert "(looked for <token_embedder/embedding>)" in message
  assert "encoder/layers_0/attention/query/kernel: expected (32, 32), found (32, 16)" \
      in message
  assert "decoder/logits_dense/kernel: expected (32, 96), found (96, 32)" in message
  assert "/ckpt" in message
  assert {m[0] for m in info.value.missing} == {"decoder/layers_1/mlp/wo/kernel",
                                                 "token_embedder/embedding"}
  assert len(info.value.wrong_shape) == 2


def test_unexpected_tensors_are_skipped_with_a_warning(caplog):
  shapes = dict(tree.expected_shapes(SMALL))
  shapes["encoder/prompt/prompt/prompt"] = (5, 32)
  reads = []
  source = _source_from(shapes, np.ones, reads)
  with caplog.at_level(logging.WARNING):
    params = tree.materialize("/ckpt", source, SMALL)
  assert "encoder/prompt/prompt/prompt" not in reads
  assert "prompt" not in params["encoder"]
  assert "encoder/prompt/prompt/prompt" in caplog.text


def test_materialize_streams_one_tensor_at_a_time():
  """Peak memory = the float32 result + one tensor in flight, not two copies.

  Each synthetic tensor is produced as float64 (twice its float32 size), the way a
  reader hands over data that still needs a conversion. Holding the sources until
  the end would need 3x the result; converting all then copying, 2x.
  """
  config = SMALL.replace(vocab_size=256, emb_dim=64, head_dim=16, mlp_dim=512,
                        num_encoder_layers=4, num_decoder_layers=4)
  shapes = tree.expected_shapes(config)
  result_bytes = sum(4 * int(np.prod(s)) for s in shapes.values())
  largest_f64 = max(8 * int(np.prod(s)) for s in shapes.values())
  source = _source_from(shapes, lambda s: np.random.default_rng(0).random(s))
  tracemalloc.start()
  try:
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    params = tree.materialize("mem", source, config)
    peak = tracemalloc.get_traced_memory()[1] - base
  finally:
    tracemalloc.stop()
  assert len(jax.tree_util.tree_leaves(params)) == len(shapes)
  assert result_bytes > 4 * largest_f64  # the bound below is meaningful
  assert peak <= result_bytes + largest_f64 + 256 * 1024, (peak, result_bytes)


def test_config_mismatch_lists_each_field_with_both_values():
  found = {"emb_dim": 4, "num_heads": 2, "vocab_size": 32128, "mlp_dim": 8}
  config = SMALL.replace(vocab_size=32128)
  with pytest.raises(checkpoints.ConfigMismatchError) as info:
    tree.resolve_config("/some/ckpt", found, config)
  message = str(info.value)
  assert "/some/ckpt" in message
  assert "emb_dim: config has 32, checkpoint has 4" in message
  assert "num_heads: config has 4, checkpoint has 2" in message
  assert "mlp_dim: config has 64, checkpoint has 8" in message
  assert "vocab_size" not in message  # agrees
  assert {m[0] for m in info.value.mismatches} == {"emb_dim", "num_heads", "mlp_dim"}


def test_resolve_config_without_config_uses_checkpoint_then_defaults():
  config = tree.resolve_config("/c", {"emb_dim": 4, "num_heads": 2},
                               None, runtime={"dropout_rate": 0.0})
  assert (config.emb_dim, config.num_heads, config.dropout_rate) == (4, 2, 0.0)
  assert config.relative_attention_max_distance == 128  # T5Config default
  given = SMALL.replace(dropout_rate=0.3)
  assert tree.resolve_config("/c", {"emb_dim": 32}, given) is given


def test_missing_path_says_so(tmp_path):
  missing = tmp_path / "no_such_checkpoint"
  for call in (checkpoints.detect_format, checkpoints.load):
    with pytest.raises(checkpoints.CheckpointNotFoundError) as info:
      call(missing)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)
  assert isinstance(info.value, FileNotFoundError)


def test_unknown_directory_names_the_formats_and_files_tried(tmp_path):
  (tmp_path / "weights.h5").write_bytes(b"x")
  with pytest.raises(checkpoints.UnknownCheckpointFormatError) as info:
    checkpoints.load(tmp_path)
  message = str(info.value)
  assert "weights.h5" in message  # what was found
  for expected in ("t5x", "huggingface", "native", "`checkpoint` msgpack",
                   "model.safetensors", "pytorch_model.bin", "params/",
                   "config.json"):
    assert expected in message, expected
  assert isinstance(info.value, ValueError)


def test_config_json_without_weights_gets_a_hint(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(checkpoints.UnknownCheckpointFormatError,
                     match="config.json` is present but neither"):
    checkpoints.detect_format(tmp_path)


def test_a_file_is_not_a_checkpoint(tmp_path):
  file = tmp_path / "model.safetensors"
  file.write_bytes(b"\0" * 8)
  with pytest.raises(checkpoints.UnknownCheckpointFormatError,
                     match="pass the checkpoint directory"):
    checkpoints.detect_format(file)
