"""Subprocess body of tests/test_partitioning.py (JAX must start with its XLA flags).

  python tests/partitioning_worker.py mesh OUT_JSON MODEL_DIR
      8 host devices: 5 steps on a 1-device mesh and on a 2x4 (data x model) mesh.
  python tests/partitioning_worker.py process PID PORT OUT_JSON MODEL_DIR
      one of two processes (2 devices each) joined on 127.0.0.1:PORT; a 2x2 mesh.
  python tests/partitioning_worker.py single OUT_JSON MODEL_DIR
      the single-process reference of the two-process run (1 device).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

STEPS = 5
BATCH = 8


def _train(model_dir, mesh, shard=0, num_shards=1, axis_rules=None, **config):
  import trainer_testlib as tl  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train as train_lib  # pylint: disable=g-import-not-at-top
  return train_lib.build_and_train(
      tl.train_config(model_dir, train_steps=STEPS, batch_size=BATCH,
                      checkpoint_period=STEPS),
      method=tl.model_tuning(), model_config=tl.tiny_config(**config),
      optimizer=tl.adam(), mesh=mesh, axis_rules=axis_rules,
      batches_fn=tl.fixed_batches(BATCH, shard=shard, num_shards=num_shards))


def _residual_stream_sharding(mesh, axis_rules):
  """Shardings XLA gives an encoder layer's output [B, T, H] under `axis_rules`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import trainer_testlib as tl  # pylint: disable=g-import-not-at-top
  from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.t5 import EncoderLayer  # pylint: disable=g-import-not-at-top
  cfg = tl.tiny_config(dropout_rate=0.0)
  layer = EncoderLayer(cfg)
  x = jnp.ones((BATCH, 4, cfg.emb_dim))
  mask = jnp.ones((BATCH, 1, 1, 4), bool)
  bias = jnp.zeros((1, cfg.num_heads, 4, 4))
  params = layer.init(jax.random.PRNGKey(0), x, mask, bias)
  with partitioning.activation_partitioning(mesh, axis_rules):
    compiled = jax.jit(lambda p, x: layer.apply(p, x, mask, bias)).lower(
        params, x).compile()
  return [str(a) for a in compiled.output_shardings.spec]


def _kernel_sharding(mesh):
  """How the mesh shards a kernel whose `mlp` axis maps to `model`."""
  import jax  # pylint: disable=g-import-not-at-top
  import trainer_testlib as tl  # pylint: disable=g-import-not-at-top
  from prompt_tuning import building  # pylint: disable=g-import-not-at-top
  _, params, _ = building.build_params(
      tl.model_tuning(), tl.tiny_config(), None, jax.random.PRNGKey(0), mesh=mesh)
  kernel = params["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]  # [embed, mlp]
  return {"spec": [str(a) for a in kernel.sharding.spec],
          "shape": list(kernel.shape),
          "shard_shape": list(kernel.addressable_shards[0].data.shape)}


def _summary(result):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from prompt_tuning.params import flatten  # pylint: disable=g-import-not-at-top
  return {"losses": [result.losses[s] for s in range(1, STEPS + 1)],
          "params": {k: np.asarray(v).ravel()[:16].tolist()
                     for k, v in flatten(result.trainable).items()}}


def main(argv):
  mode = argv[1]
  if mode == "mesh":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax  # pylint: disable=g-import-not-at-top
    from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
    out, model_dir = argv[2], argv[3]
    assert jax.device_count() == 8, jax.devices()
    one = partitioning.make_mesh(1, devices=jax.devices()[:1])
    sharded = partitioning.make_mesh(4)
    two_d = partitioning.rules(activation_partitioning_dims=2,
                               parameter_partitioning_dims=2)
    result = {"single": _summary(_train(os.path.join(model_dir, "one"), one)),
              "sharded": _summary(_train(os.path.join(model_dir, "eight"), sharded)),
              # 2-D activation and parameter partitioning, layers rematerialized.
              "two_d": _summary(_train(os.path.join(model_dir, "two_d"), sharded,
                                       axis_rules=two_d, remat_policy="full")),
              "residual_1d": _residual_stream_sharding(sharded, partitioning.rules()),
              "residual_2d": _residual_stream_sharding(sharded, two_d),
              "mesh_shape": dict(sharded.shape), "kernel": _kernel_sharding(sharded)}
  elif mode == "process":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    pid, port, out, model_dir = int(argv[2]), argv[3], argv[4], argv[5]
    from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
    partitioning.initialize_distributed(partitioning.DistributedConfig(
        enabled=True, coordinator_address=f"127.0.0.1:{port}", num_processes=2,
        process_id=pid))
    import jax  # pylint: disable=g-import-not-at-top
    assert jax.process_count() == 2 and jax.device_count() == 4
    mesh = partitioning.make_mesh(2)
    # Two processes as two "slices" joined over DCN: `data` spans the processes.
    hybrid = partitioning.make_mesh(2, dcn_data_parallel=2)
    result = {"process": _summary(_train(model_dir, mesh, shard=pid, num_shards=2)),
              "process_index": jax.process_index(), "kernel": _kernel_sharding(mesh),
              "hybrid": [[d.process_index for d in row] for row in hybrid.devices]}
  elif mode == "single":
    out, model_dir = argv[2], argv[3]
    from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
    result = {"single": _summary(_train(model_dir, partitioning.make_mesh(1)))}
  else:
    raise SystemExit(f"unknown mode {mode}")
  with open(out, "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main(sys.argv)
