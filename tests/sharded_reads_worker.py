"""Subprocess body of tests/test_sharded_reads.py: one of two processes (2 CPU
devices each) joined on 127.0.0.1, loading checkpoints on a 1 x 4 (data x model)
mesh with per-host reads.

  python tests/sharded_reads_worker.py PID PORT OUT_JSON T5X_DIR HF_DIR CONFIG_JSON
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _share_bytes(arrays):
  """Bytes of the distinct boxes this process's devices hold (float32)."""
  total = 0
  for array in arrays.values():
    boxes = {tuple((s.start, s.stop) for s in shard.index): shard.data.size
             for shard in array.addressable_shards}
    total += 4 * sum(boxes.values())
  return total


def _check_values(arrays, full):
  """Largest difference between this process's shards and a whole-model read."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  worst = 0.0
  for name, array in arrays.items():
    for shard in array.addressable_shards:
      want = np.asarray(full[name], np.float32)[shard.index]
      worst = max(worst, float(np.max(np.abs(np.asarray(shard.data) - want))))
  return worst


def main(argv):
  pid, port, out, t5x_dir, hf_dir = int(argv[1]), argv[2], argv[3], argv[4], argv[5]
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
  partitioning.initialize_distributed(partitioning.DistributedConfig(
      enabled=True, coordinator_address=f"127.0.0.1:{port}", num_processes=2,
      process_id=pid))
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from prompt_tuning import building, checkpoints
  from prompt_tuning.methods import initializers, prompt
  from prompt_tuning.params import flatten
  from prompt_tuning.models.t5 import Transformer  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.config import T5Config  # pylint: disable=g-import-not-at-top
  assert jax.process_count() == 2 and jax.device_count() == 4
  config = T5Config(**json.loads(argv[6]))
  mesh = partitioning.make_mesh(4)
  shardings = flatten(partitioning.param_shardings(
      building.abstract_params(Transformer(config)), mesh,
      partitioning.rules()))
  result = {"process_index": jax.process_index()}
  for fmt, path in (("t5x", t5x_dir), ("huggingface", hf_dir)):
    checkpoints.ReadCounter.reset()
    opened = checkpoints.open_checkpoint(path, config)
    arrays = checkpoints.load_sharded(opened, shardings)
    read = checkpoints.ReadCounter.reset()
    _, full = checkpoints.load(path, config)
    whole = checkpoints.ReadCounter.reset()
    full = flatten(full)
    result[fmt] = {
        "bytes_read": read, "whole_model_bytes": whole,
        "share_bytes": _share_bytes(arrays),
        "max_abs_diff": _check_values(arrays, full),
        "sharded": sorted(n for n, a in arrays.items() if not a.is_fully_replicated)}
  # The whole entry point: a prompt drawn from the sharded embedding table.
  method = prompt.prompt_tuning(length=3, initializer=initializers.sampled_vocab(50))
  _, params, _ = building.build_params(
      method, config, t5x_dir, jax.random.PRNGKey(0), mesh=mesh)
  result["prompt"] = np.asarray(params["encoder"]["prompt"]["prompt"]).tolist()
  with open(out, "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main(sys.argv)
