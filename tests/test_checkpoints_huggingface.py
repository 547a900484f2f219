"""Hugging Face directories: layouts, dtypes, configs and errors (no transformers).

Numerical agreement with transformers itself is in tests/test_hf_parity.py.
"""
import json
import sys
import tracemalloc

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from prompt_tuning import checkpoints
from prompt_tuning.checkpoints import huggingface, tree
from prompt_tuning.models import config as config_lib

SMALL = config_lib.preset("tiny").replace(vocab_size=80, head_dim=6,
                                          num_decoder_layers=3, dropout_rate=0.0)


def _flat(params, prefix=""):
  out = {}
  for key, value in params.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _random_params(config, seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in tree.expected_shapes(config).items():
    node = out
    *parents, last = name.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[last] = rng.normal(size=shape).astype(np.float32)
  return out


@pytest.fixture
def saved(tmp_path):
  params = _random_params(SMALL)
  return checkpoints.save_huggingface(tmp_path / "hf", params, SMALL), params


def _assert_same(loaded, params):
  flat_loaded, flat = _flat(loaded), _flat(params)
  assert set(flat_loaded) == set(flat)
  for name in flat:
    np.testing.assert_array_equal(flat_loaded[name], flat[name], err_msg=name)


def test_safetensors_roundtrip(saved):
  path, params = saved
  assert checkpoints.detect_format(path) == "huggingface"
  config, loaded = checkpoints.load(path)
  assert config == SMALL
  _assert_same(loaded, params)
  hf_config = json.loads((path / "config.json").read_text())
  assert hf_config["feed_forward_proj"] == "gated-gelu"
  assert hf_config["tie_word_embeddings"] is False
  tensors = load_file(str(path / "model.safetensors"))
  # torch Linear layout [out, in]; relative bias [buckets, heads].
  np.testing.assert_array_equal(
      tensors["encoder.block.1.layer.0.SelfAttention.q.weight"],
      params["encoder"]["layers_1"]["attention"]["query"]["kernel"].T)
  np.testing.assert_array_equal(
      tensors["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
      params["decoder"]["relpos_bias"]["rel_embedding"].T)
  np.testing.assert_array_equal(tensors["lm_head.weight"],
                                params["decoder"]["logits_dense"]["kernel"].T)


def test_bfloat16_safetensors_are_read_as_float32(saved):
  torch = pytest.importorskip("torch")
  from safetensors.torch import save_file as save_torch  # pylint: disable=g-import-not-at-top
  path, params = saved
  tensors = load_file(str(path / "model.safetensors"))
  save_torch({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()},
             str(path / "model.safetensors"))
  _, loaded = checkpoints.load(path)
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  rounded = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32)
             for k, v in _flat(params).items()}
  for name, value in _flat(loaded).items():
    assert value.dtype == np.float32
    np.testing.assert_array_equal(value, rounded[name], err_msg=name)
  assert not np.array_equal(_flat(loaded)["token_embedder/embedding"],
                            _flat(params)["token_embedder/embedding"])


def test_sharded_safetensors(saved):
  path, params = saved
  tensors = load_file(str(path / "model.safetensors"))
  (path / "model.safetensors").unlink()
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  weight_map = {}
  for file, members in shards.items():
    save_file({n: tensors[n] for n in members}, str(path / file))
    weight_map.update({n: file for n in members})
  (path / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {}, "weight_map": weight_map}))
  _, loaded = checkpoints.load(path)
  _assert_same(loaded, params)


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_pytorch_bin(saved, zipfile):
  torch = pytest.importorskip("torch")
  path, params = saved
  tensors = load_file(str(path / "model.safetensors"))
  (path / "model.safetensors").unlink()
  state = {k: torch.from_numpy(v) for k, v in tensors.items()}
  state["encoder.embed_tokens.weight"] = state["shared.weight"]  # as HF writes it
  torch.save(state, str(path / "pytorch_model.bin"),
             _use_new_zipfile_serialization=zipfile)
  _, loaded = checkpoints.load(path)
  _assert_same(loaded, params)


class _Exploit:
  """Unpickling this would run `__reduce__`'s callable: weights_only must refuse."""

  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (open, (self.target, "w"))


def test_pytorch_bin_never_unpickles_arbitrary_objects(saved, tmp_path):
  torch = pytest.importorskip("torch")
  path, _ = saved
  (path / "model.safetensors").unlink()
  marker = tmp_path / "side_effect"
  torch.save({"shared.weight": torch.zeros(2), "payload": _Exploit(str(marker))},
             str(path / "pytorch_model.bin"))
  with pytest.raises(checkpoints.CheckpointError, match="weights_only=True"):
    checkpoints.load(path)
  assert not marker.exists()


def test_pytorch_bin_without_torch_is_a_clear_error(saved, monkeypatch):
  path, _ = saved
  (path / "model.safetensors").rename(path / "pytorch_model.bin")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` → ImportError
  with pytest.raises(checkpoints.MissingDependencyError) as info:
    checkpoints.load(path)
  assert "pytorch_model.bin" in str(info.value)
  assert "pip install torch" in str(info.value)


def test_tied_checkpoint_uses_the_shared_embedding(saved):
  path, params = saved
  tensors = load_file(str(path / "model.safetensors"))
  del tensors["lm_head.weight"]
  save_file(tensors, str(path / "model.safetensors"))
  hf_config = json.loads((path / "config.json").read_text())
  embedding = params["token_embedder"]["embedding"]
  # transformers 5 style: tied, unscaled (T5 1.1 saved by transformers 5).
  hf_config.update(tie_word_embeddings=True, scale_decoder_outputs=False)
  (path / "config.json").write_text(json.dumps(hf_config))
  _, loaded = checkpoints.load(path)
  np.testing.assert_array_equal(loaded["decoder"]["logits_dense"]["kernel"],
                                embedding.T)
  # Original-T5 style: tied and scaled by d_model**-0.5 (folded into the kernel).
  del hf_config["scale_decoder_outputs"]
  (path / "config.json").write_text(json.dumps(hf_config))
  _, loaded = checkpoints.load(path)
  np.testing.assert_allclose(loaded["decoder"]["logits_dense"]["kernel"],
                             embedding.T * SMALL.emb_dim ** -0.5, rtol=1e-6)


def test_missing_tensors_name_the_hf_tensor(saved):
  path, _ = saved
  tensors = load_file(str(path / "model.safetensors"))
  del tensors["decoder.block.2.layer.1.EncDecAttention.v.weight"]
  del tensors["encoder.final_layer_norm.weight"]
  save_file(tensors, str(path / "model.safetensors"))
  with pytest.raises(checkpoints.ParameterMismatchError) as info:
    checkpoints.load(path)
  message = str(info.value)
  assert ("decoder/layers_2/encoder_decoder_attention/value/kernel: expected shape "
          "(32, 24), not found (looked for decoder.block.2.layer.1.EncDecAttention."
          "v.weight in model.safetensors)") in message
  assert "encoder/encoder_norm/scale: expected shape (32,), not found" in message
  assert "encoder.final_layer_norm.weight" in message


def test_config_json_disagreeing_with_tensors_lists_every_shape(saved):
  path, _ = saved
  hf_config = json.loads((path / "config.json").read_text())
  hf_config["d_ff"] = 128
  (path / "config.json").write_text(json.dumps(hf_config))
  with pytest.raises(checkpoints.ParameterMismatchError) as info:
    checkpoints.load(path)
  wrong = {name for name, *_ in info.value.wrong_shape}
  assert len(wrong) == 3 * (SMALL.num_encoder_layers + SMALL.num_decoder_layers)
  assert ("decoder/layers_2/mlp/wo/kernel: expected (128, 32), found (64, 32) "
          "(from model.safetensors:decoder.block.2.layer.2.DenseReluDense.wo.weight "
          "(transposed))") in str(info.value)


def test_given_config_must_match_config_json(saved):
  path, _ = saved
  with pytest.raises(checkpoints.ConfigMismatchError) as info:
    checkpoints.load(path, SMALL.replace(emb_dim=64, relative_attention_max_distance=64))
  message = str(info.value)
  assert "emb_dim: config has 64, checkpoint has 32" in message
  assert "relative_attention_max_distance: config has 64, checkpoint has 128" in message
  # Run-time fields come from the given config.
  config, _ = checkpoints.load(path, SMALL.replace(dropout_rate=0.25))
  assert config.dropout_rate == 0.25


@pytest.mark.parametrize("change,match", [
    ({"feed_forward_proj": "relu"}, "only T5.1.1"),
    ({"model_type": "bart"}, "only 't5' and 'mt5'")])
def test_unsupported_architectures_are_rejected(saved, change, match):
  path, _ = saved
  hf_config = json.loads((path / "config.json").read_text())
  hf_config.update(change)
  (path / "config.json").write_text(json.dumps(hf_config))
  with pytest.raises(checkpoints.CheckpointError, match=match):
    checkpoints.load(path)


def test_loading_streams_from_the_file(tmp_path):
  """Peak traced memory of `load` ≈ the result + one tensor (no second copy)."""
  config = SMALL.replace(vocab_size=256, emb_dim=64, mlp_dim=512, head_dim=16,
                         num_encoder_layers=4, num_decoder_layers=4)
  path = checkpoints.save_huggingface(tmp_path / "big", _random_params(config),
                                      config)
  shapes = tree.expected_shapes(config)  # cached: tracing is not measured
  result_bytes = sum(4 * int(np.prod(s)) for s in shapes.values())
  largest = max(4 * int(np.prod(s)) for s in shapes.values())
  assert result_bytes > 8 * largest
  tracemalloc.start()
  try:
    base = tracemalloc.get_traced_memory()[0]
    _, params = checkpoints.load(path)
    peak = tracemalloc.get_traced_memory()[1] - base
  finally:
    tracemalloc.stop()
  assert params["decoder"]["layers_3"]["mlp"]["wo"]["kernel"].shape == (512, 64)
  # Read buffer + transposed copy of one tensor on top of the result.
  assert peak <= result_bytes + 2 * largest + 512 * 1024, (peak, result_bytes)


def test_unmapped_tensors_are_reported_and_skipped(saved, caplog):
  path, params = saved
  tensors = load_file(str(path / "model.safetensors"))
  tensors["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] = (
      np.ones((32, 4), np.float32))
  save_file(tensors, str(path / "model.safetensors"))
  with caplog.at_level("WARNING"):
    _, loaded = checkpoints.load(path)
  _assert_same(loaded, params)
  assert "encoder.block.1.layer.0.SelfAttention.relative_attention_bias" in caplog.text


def test_incomplete_config_json_names_the_missing_keys(saved):
  path, _ = saved
  hf_config = json.loads((path / "config.json").read_text())
  del hf_config["d_kv"], hf_config["d_ff"]
  (path / "config.json").write_text(json.dumps(hf_config))
  with pytest.raises(checkpoints.CheckpointError, match=r"lacks \['d_kv', 'd_ff'\]"):
    checkpoints.load(path)
