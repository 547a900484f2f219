"""Subprocess body of tests/test_global_stream.py: trains on the registered tiny
seqio task through the default data path (no injected batches).

  python tests/data_stream_worker.py PID NUM_PROCESSES PORT OUT_JSON MODEL_DIR STEPS

One process: 1 device (a 1 x 1 mesh). Two processes: 1 device each, joined on
127.0.0.1:PORT (a 2 x 1 mesh): another process count and another mesh.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BATCH = 4


def main(argv):
  pid, processes, port, out, model_dir, steps = argv[1:7]
  pid, processes, steps = int(pid), int(processes), int(steps)
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  # pylint: disable=g-import-not-at-top
  from prompt_tuning import partitioning
  if processes > 1:
    partitioning.initialize_distributed(partitioning.DistributedConfig(
        enabled=True, coordinator_address=f"127.0.0.1:{port}",
        num_processes=processes, process_id=pid))
  import jax
  import trainer_testlib as tl
  from prompt_tuning import train as train_lib
  assert jax.process_count() == processes
  tl.register_task()
  result = train_lib.build_and_train(
      tl.train_config(model_dir, train_steps=steps, batch_size=BATCH,
                      checkpoint_period=5, enable_dropout=False),
      method=tl.partial_tuning(), model_config=tl.tiny_config(),
      optimizer=tl.adam(), mesh=partitioning.make_mesh(1))
  with open(out, "w") as f:
    json.dump({"losses": {str(k): v for k, v in result.losses.items()}}, f)


if __name__ == "__main__":
  main(sys.argv)
