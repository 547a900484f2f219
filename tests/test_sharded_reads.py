"""Per-host checkpoint reads: two processes each read about half of a model that is
sharded over a `model` axis spanning both, and get exactly the checkpoint's values."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import T5X_TINY_CHECKPOINT, free_port, wait_for
from test_checkpoints_t5x import FIXTURE_CONFIG

import sharded_reads_worker
from prompt_tuning import building, checkpoints
from prompt_tuning.checkpoints import tree
from prompt_tuning.methods import initializers, prompt
from prompt_tuning.params import flatten

WORKER = pathlib.Path(sharded_reads_worker.__file__)
REPO = WORKER.parents[1]
VOCAB_TENSORS = {"token_embedder/embedding", "decoder/logits_dense/kernel"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("sharded_reads")
  _, params = checkpoints.load(T5X_TINY_CHECKPOINT, FIXTURE_CONFIG)
  hf_dir = checkpoints.save_huggingface(tmp / "hf", params, FIXTURE_CONFIG)
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=os.pathsep.join([str(REPO), str(WORKER.parent)]))
  env.pop("XLA_FLAGS", None)
  config_json = json.dumps(FIXTURE_CONFIG.to_dict())
  procs = [subprocess.Popen(
      [sys.executable, str(WORKER), str(i), str(port), str(tmp / f"p{i}.json"),
       str(T5X_TINY_CHECKPOINT), str(hf_dir), config_json],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = wait_for(dict(enumerate(procs)), timeout=600).values()
  for proc, log in zip(procs, logs):
    assert proc.returncode == 0, log[-4000:]
  return [json.loads((tmp / f"p{i}.json").read_text()) for i in range(2)]


@pytest.mark.parametrize("fmt", ["t5x", "huggingface"])
def test_each_process_reads_about_its_share_and_the_right_values(runs, fmt):
  assert sorted(r["process_index"] for r in runs) == [0, 1]
  for result in runs:
    r = result[fmt]
    assert r["max_abs_diff"] == 0.0
    assert VOCAB_TENSORS <= set(r["sharded"])  # the bulk of the bytes is sharded
    # Half of the vocabulary tensors plus the small replicated ones: well under
    # the whole model, and at least the boxes this process's devices hold.
    assert r["share_bytes"] < 0.6 * r["whole_model_bytes"]
    assert r["bytes_read"] >= r["share_bytes"], r
    if fmt == "huggingface":  # offset reads: exactly the boxes
      assert r["bytes_read"] == r["share_bytes"]
    else:  # whole zarr chunks: [4, 4096] chunks do not align with 8032-column shards
      assert r["bytes_read"] < 0.65 * r["whole_model_bytes"], r
  # Together the two processes read the model about once, not twice.
  together = sum(result[fmt]["bytes_read"] for result in runs)
  assert together < 1.3 * runs[0][fmt]["whole_model_bytes"]


def test_prompt_from_the_sharded_embedding_matches_one_process(runs):
  method = prompt.prompt_tuning(length=3, initializer=initializers.sampled_vocab(50))
  _, params, _ = building.build_params(
      method, FIXTURE_CONFIG, str(T5X_TINY_CHECKPOINT), jax.random.PRNGKey(0))
  want = params["encoder"]["prompt"]["prompt"]
  assert np.std(want) > 0
  for result in runs:
    np.testing.assert_array_equal(np.asarray(result["prompt"], np.float32), want)


def test_slice_reads_of_transposed_safetensors_and_zarr_match_numpy(tmp_path):
  """Boxes cutting any dimension, through the transposed HF mapping and zarr."""
  _, params = checkpoints.load(T5X_TINY_CHECKPOINT, FIXTURE_CONFIG)
  hf_dir = checkpoints.save_huggingface(tmp_path / "hf", params, FIXTURE_CONFIG)
  values = flatten(params)
  boxes = [(slice(1, 3), slice(100, 16100)), (slice(0, 4), slice(8032, 8033)),
           (slice(2, 3), slice(None))]
  for path in (T5X_TINY_CHECKPOINT, hf_dir):
    source = checkpoints.open_checkpoint(path, FIXTURE_CONFIG).source
    for name in ("decoder/logits_dense/kernel", "token_embedder/embedding",
                 "encoder/layers_0/mlp/wo/kernel"):
      tensor = source[name]
      assert tensor.read_slice is not None, (path, name)
      for box in boxes:
        box = box if name == "decoder/logits_dense/kernel" else box[::-1]
        index = tree.normalize_index(box, tensor.shape)
        np.testing.assert_array_equal(tensor.read_slice(index), values[name][index],
                                      err_msg=f"{path} {name} {box}")


def test_native_and_torch_bin_slice_reads_read_only_the_box(tmp_path):
  """Native (orbax OCDBT zarr) and PyTorch `.bin` (memory-mapped) read slices too."""
  import torch  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  _, params = checkpoints.load(T5X_TINY_CHECKPOINT, FIXTURE_CONFIG)
  values = flatten(params)
  native_dir = checkpoints.save(tmp_path / "native", params, FIXTURE_CONFIG,
                                chunk_bytes=32 * 1024)  # the embedding: 16 chunks
  bin_dir = checkpoints.save_huggingface(tmp_path / "bin", params, FIXTURE_CONFIG)
  tensors = load_file(str(bin_dir / "model.safetensors"))
  torch.save({k: torch.from_numpy(v) for k, v in tensors.items()},
             str(bin_dir / "pytorch_model.bin"))
  (bin_dir / "model.safetensors").unlink()
  name = "token_embedder/embedding"  # [vocab, H]
  for path in (native_dir, bin_dir):
    source = checkpoints.open_checkpoint(path, FIXTURE_CONFIG).source
    tensor = source[name]
    assert tensor.read_slice is not None, path
    index = tree.normalize_index((slice(100, 164), slice(None)), tensor.shape)
    tree.ReadCounter.reset()
    np.testing.assert_array_equal(tensor.read_slice(index), values[name][index])
    read = tree.ReadCounter.reset()
    assert 0 < read < values[name].nbytes / 4, (path, read)
    box = tree.normalize_index((slice(2, 3), slice(5, 9)), tensor.shape)
    np.testing.assert_array_equal(tensor.read_slice(box), values[name][box])
