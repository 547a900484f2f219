"""Reading T5X checkpoints: the real tiny fixture and small synthetic ones."""
import os

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts

from conftest import SHARED_FIXTURES, T5X_TINY_CHECKPOINT

from prompt_tuning.params import unflatten
from prompt_tuning import checkpoints
from prompt_tuning.checkpoints import t5x, tree
from prompt_tuning.models import config as config_lib
from prompt_tuning.models.t5 import Transformer

# The sizes documented in ../shared/fixtures/README.md.
FIXTURE_CONFIG = config_lib.T5Config(
    vocab_size=32128, emb_dim=4, num_heads=2, head_dim=2, mlp_dim=8,
    num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=4,
    relative_attention_max_distance=8)


@pytest.fixture(scope="module")
def fixture_loaded():
  return checkpoints.load(T5X_TINY_CHECKPOINT, FIXTURE_CONFIG)


def _flat(params, prefix=""):
  out = {}
  for key, value in params.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _independent_read(name, leaf):
  """Reads one target leaf without the project's reader (flax + tensorstore)."""
  if isinstance(leaf, dict):
    spec = {"driver": "zarr", "kvstore": {
        "driver": "file", "path": str(T5X_TINY_CHECKPOINT / leaf["kvstore"]["path"])}}
    return ts.open(spec).result().read().result()
  return np.asarray(leaf)


def test_fixture_every_parameter_restored_exactly(fixture_loaded):
  config, params = fixture_loaded
  assert config == FIXTURE_CONFIG
  flat = _flat(params)
  assert set(flat) == set(tree.expected_shapes(FIXTURE_CONFIG))
  raw = flax.serialization.msgpack_restore(
      (T5X_TINY_CHECKPOINT / "checkpoint").read_bytes())["optimizer"]["target"]
  raw_flat = t5x._flatten(raw)  # pylint: disable=protected-access
  assert set(raw_flat) == set(flat)
  for name, value in flat.items():
    assert value.dtype == np.float32, name
    np.testing.assert_array_equal(value, _independent_read(name, raw_flat[name]),
                                  err_msg=name)
  expected_embedding = np.load(SHARED_FIXTURES / "t5x_tiny" /
                               "token_embedder_embedding_32128x4.npy")
  np.testing.assert_array_equal(params["token_embedder"]["embedding"],
                                expected_embedding)


def test_fixture_forward_pass_runs(fixture_loaded):
  config, params = fixture_loaded
  encoder = jnp.array([[37, 1000, 5, 1, 0, 0], [8, 9, 10, 11, 12, 1]])
  decoder = jnp.array([[0, 4, 5, 6], [0, 7, 8, 9]])
  logits = jax.jit(Transformer(config).apply)({"params": params}, encoder, decoder)
  assert logits.shape == (2, 4, 32128)
  assert bool(jnp.all(jnp.isfinite(logits)))
  assert float(jnp.std(logits)) > 0  # the trained weights are not all zeros


def test_fixture_without_config_is_refused_unless_only_weights_are_wanted():
  # The fixture was trained with max distance 8; a T5X checkpoint does not say so,
  # and a silent default of 128 would build a different model.
  with pytest.raises(checkpoints.T5XConfigRequiredError) as info:
    checkpoints.load(T5X_TINY_CHECKPOINT)
  message = str(info.value)
  assert str(T5X_TINY_CHECKPOINT) in message
  assert "relative_attention_max_distance" in message and "MODEL_CONFIG" in message
  config, params = checkpoints.load(T5X_TINY_CHECKPOINT, weights_only=True)
  assert config == FIXTURE_CONFIG.replace(relative_attention_max_distance=128)
  assert params["decoder"]["logits_dense"]["kernel"].shape == (4, 32128)


LOGITS = "target.decoder.logits_dense.kernel"  # [4, 32128] in 8 chunks of [4, 4096]


@pytest.fixture
def fixture_copy(tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  copy = tmp_path / "checkpoint_3"
  shutil.copytree(T5X_TINY_CHECKPOINT, copy)
  return copy


def test_missing_zarr_chunk_is_an_error_naming_tensor_chunk_and_file(fixture_copy):
  chunk = fixture_copy / LOGITS / "0.3"
  chunk.unlink()  # a partial download: tensorstore alone would read 16,384 zeros
  with pytest.raises(t5x.DamagedChunkError) as info:
    checkpoints.load(fixture_copy, FIXTURE_CONFIG)
  error = info.value
  assert (error.tensor, error.chunk, error.file) == (
      "decoder/logits_dense/kernel", "0.3", str(chunk))
  message = str(error)
  assert "decoder/logits_dense/kernel" in message and str(chunk) in message
  assert "missing" in message
  assert isinstance(error, checkpoints.CheckpointError)


def test_corrupt_zarr_chunk_is_an_error_naming_tensor_chunk_and_file(fixture_copy):
  chunk = fixture_copy / LOGITS / "0.5"
  chunk.write_bytes(b"not gzip data at all" * 8)
  with pytest.raises(t5x.DamagedChunkError) as info:
    checkpoints.load(fixture_copy, FIXTURE_CONFIG)
  error = info.value
  assert (error.tensor, error.chunk, error.file) == (
      "decoder/logits_dense/kernel", "0.5", str(chunk))
  assert "corrupt" in str(error) and str(chunk) in str(error)
  # An intact copy of the same chunk loads again (the check is about the data).
  chunk.write_bytes((T5X_TINY_CHECKPOINT / LOGITS / "0.5").read_bytes())
  _, params = checkpoints.load(fixture_copy, FIXTURE_CONFIG)
  assert np.count_nonzero(params["decoder"]["logits_dense"]["kernel"] == 0) == 0


def test_inconsistent_config_is_rejected_with_both_values():
  wrong = FIXTURE_CONFIG.replace(emb_dim=8, num_heads=4, mlp_dim=16,
                                 num_decoder_layers=3, vocab_size=32100)
  with pytest.raises(checkpoints.ConfigMismatchError) as info:
    checkpoints.load(T5X_TINY_CHECKPOINT, wrong)
  message = str(info.value)
  for line in ("emb_dim: config has 8, checkpoint has 4",
               "num_heads: config has 4, checkpoint has 2",
               "mlp_dim: config has 16, checkpoint has 8",
               "num_decoder_layers: config has 3, checkpoint has 2",
               "vocab_size: config has 32100, checkpoint has 32128"):
    assert line in message
  assert str(T5X_TINY_CHECKPOINT) in message


def test_optimizer_state_is_never_decoded_or_opened(monkeypatch):
  decoded, opened = [], []
  original_hook, original_open = t5x._ext_hook, t5x._open_spec  # pylint: disable=protected-access

  def counting_hook(code, data):
    decoded.append(code)
    return original_hook(code, data)

  def recording_open(spec):
    opened.append(spec["kvstore"]["path"])
    return original_open(spec)

  monkeypatch.setattr(t5x, "_ext_hook", counting_hook)
  monkeypatch.setattr(t5x, "_open_spec", recording_open)
  checkpoints.load(T5X_TINY_CHECKPOINT, FIXTURE_CONFIG)
  raw = flax.serialization.msgpack_restore(
      (T5X_TINY_CHECKPOINT / "checkpoint").read_bytes())
  inline_target = [v for v in t5x._flatten(raw["optimizer"]["target"]).values()  # pylint: disable=protected-access
                   if isinstance(v, np.ndarray)]
  inline_state = [v for v in t5x._flatten(raw["optimizer"]["state"]).values()  # pylint: disable=protected-access
                  if isinstance(v, np.ndarray)]
  assert len(inline_state) > len(inline_target) > 0
  assert len(decoded) == len(inline_target)  # only target arrays were built
  assert opened and all(os.path.basename(p).startswith("target.") for p in opened)


# ---------------------------------------------------------------- synthetic


def _write_t5x(directory, params, state=None, inline_below=64):
  """Writes `params` like T5X does: big arrays as zarr, small ones inline."""
  directory.mkdir(parents=True)
  target = {}
  for name, value in _flat(params).items():
    value = np.asarray(value, np.float32)
    if value.size < inline_below:
      leaf = value
    else:
      folder = "target." + name.replace("/", ".")
      spec = {"driver": "zarr", "kvstore": {"driver": "gfile", "path": folder},
              "metadata": {"chunks": list(value.shape), "compressor": {
                  "id": "gzip", "level": 1}, "dtype": "<f4",
                           "shape": list(value.shape)}}
      store = ts.open({**spec, "kvstore": {"driver": "file",
                                            "path": str(directory / folder)}},
                      create=True).result()
      store.write(value).result()
      leaf = spec
    node = target
    *parents, last = name.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[last] = leaf
  contents = {"version": 3, "optimizer": {"state": state or {"step": np.int32(1)},
                                          "target": target}}
  (directory / "checkpoint").write_bytes(flax.serialization.msgpack_serialize(
      contents))
  return directory


SMALL = config_lib.preset("tiny").replace(vocab_size=64, num_decoder_layers=3)


def _random_params(config, seed=0):
  rng = np.random.default_rng(seed)
  return tree_from({name: rng.normal(size=shape).astype(np.float32)
                    for name, shape in tree.expected_shapes(config).items()})


def tree_from(flat):
  return unflatten(flat)


def test_synthetic_roundtrip_skips_unreadable_optimizer_state(tmp_path):
  params = _random_params(SMALL)
  # Optimizer state pointing at an array that does not exist: reading it would fail.
  state = {"param_states": {"token_embedder": {"embedding": {"v_row": {
      "driver": "zarr", "kvstore": {"driver": "gfile",
                                    "path": "state.param_states.missing"},
      "metadata": {"shape": [64], "dtype": "<f4"}}}}}, "step": np.int32(7)}
  directory = _write_t5x(tmp_path / "checkpoint_7", params, state)
  config, loaded = checkpoints.load(directory, SMALL)
  assert config == SMALL
  for name, value in _flat(params).items():
    np.testing.assert_array_equal(_flat(loaded)[name], value, err_msg=name)
  inferred, _ = checkpoints.load(directory, weights_only=True)
  assert inferred.num_decoder_layers == 3 and inferred.num_encoder_layers == 2
  assert (inferred.emb_dim, inferred.head_dim, inferred.mlp_dim) == (32, 8, 64)


def test_missing_and_misshaped_tensors_are_all_listed(tmp_path):
  flat = _flat(_random_params(SMALL))
  del flat["decoder/layers_2/encoder_decoder_attention/value/kernel"]
  del flat["encoder/encoder_norm/scale"]
  flat["decoder/layers_1/mlp/wi_0/kernel"] = np.zeros((32, 48), np.float32)
  flat["decoder/layers_2/mlp/wo/kernel"] = np.zeros((48, 32), np.float32)
  directory = _write_t5x(tmp_path / "checkpoint_1", tree_from(flat))
  with pytest.raises(checkpoints.ParameterMismatchError) as info:
    checkpoints.load(directory, SMALL)
  message = str(info.value)
  assert ("decoder/layers_2/encoder_decoder_attention/value/kernel: expected shape "
          "(32, 32), not found") in message
  assert "encoder/encoder_norm/scale: expected shape (32,), not found" in message
  assert "decoder/layers_1/mlp/wi_0/kernel: expected (32, 64), found (32, 48)" in message
  assert "decoder/layers_2/mlp/wo/kernel: expected (64, 32), found (48, 32)" in message
  assert "target.decoder.layers_2.mlp.wo.kernel" in message  # where it came from


def test_parent_directory_resolves_to_the_latest_step(tmp_path):
  for step in ("3", "10"):
    os.symlink(T5X_TINY_CHECKPOINT, tmp_path / f"checkpoint_{step}")
  (tmp_path / "checkpoint_20").mkdir()  # no msgpack file: not a checkpoint
  os.symlink(T5X_TINY_CHECKPOINT, tmp_path / "checkpoint_30.tmp-1234")
  assert t5x.resolve_checkpoint_dir(tmp_path).name == "checkpoint_10"
  assert checkpoints.detect_format(tmp_path) == "t5x"
  assert t5x.resolve_checkpoint_dir(T5X_TINY_CHECKPOINT.parent).name == "checkpoint_3"
  assert t5x.resolve_checkpoint_dir(T5X_TINY_CHECKPOINT / "checkpoint").name == \
      "checkpoint_3"
  config, params = checkpoints.load(tmp_path, FIXTURE_CONFIG)
  assert params["token_embedder"]["embedding"].shape == (32128, 4)


def test_gcs_paths_get_the_gcs_kvstore_driver():
  spec = {"driver": "zarr", "kvstore": {"driver": "gfile",
                                        "path": "target.encoder.layers_0.mlp.wo.kernel"},
          "metadata": {"shape": [2048, 768], "dtype": "<f4"}}
  directory = "gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000"
  absolute = t5x.absolute_spec(directory, spec)
  assert absolute == {"driver": "zarr", "kvstore": {
      "driver": "gcs", "bucket": "t5-data",
      "path": ("pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000/"
               "target.encoder.layers_0.mlp.wo.kernel")}}
  assert ts.Spec(absolute).to_json()["kvstore"]["driver"] == "gcs"  # a valid spec
  local = t5x.absolute_spec("/data/ckpt/checkpoint_3", spec)
  assert local["kvstore"] == {"driver": "file", "path": (
      "/data/ckpt/checkpoint_3/target.encoder.layers_0.mlp.wo.kernel")}
  # tensorstore < 0.1.14 kept the relative path at the top level.
  old = t5x.absolute_spec("gs://b/run/checkpoint_5", {
      "driver": "zarr", "kvstore": {"driver": "gcs", "bucket": "b"},
      "path": "target.x"})
  assert old["kvstore"] == {"driver": "gcs", "bucket": "b",
                            "path": "run/checkpoint_5/target.x"}
  assert "path" not in old
  with pytest.raises(checkpoints.CheckpointError, match="only local paths and gs://"):
    t5x.absolute_spec("s3://bucket/ckpt", spec)


def test_garbage_msgpack_is_a_clear_error(tmp_path):
  directory = tmp_path / "checkpoint_1"
  directory.mkdir()
  (directory / "checkpoint").write_bytes(b"\x93not a checkpoint")
  with pytest.raises(checkpoints.CheckpointError, match="not a T5X"):
    checkpoints.load(directory)
