"""Subprocess body of tests/test_opt_state_sharding.py (8 simulated CPU devices).

  python tests/opt_sharding_worker.py OUT_JSON

Compiles every method's train step on a 2 x 4 (data x model) mesh and reports the
shapes all-gathered in the compiled HLO next to the full shapes of the sharded
trainable parameters and optimizer-state leaves. `prefix_xla_guess` is prefix
tuning with the optimizer state laid out as XLA proposes (the previous behaviour),
to show that the check catches what the issue describes.
"""
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_ALL_GATHER = re.compile(r"=\s*\(?([a-z0-9]+\[[0-9,]*\])[^=]*?\ball-gather(?:-start)?\(")


def _methods():
  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import optim
  from prompt_tuning.methods import baselines, lopa, prefix, prompt
  return {
      "prompt": (prompt.prompt_tuning(length=3), optim.adafactor_prompt_tuning()),
      "prefix": (prefix.prefix_tuning(length=3, hidden_dim=8),
                 optim.adamw_prefix_tuning()),
      "lopa": (lopa.lopa(length=3, rank=2, hidden_dim=8), optim.adamw_lopa()),
      "model": (baselines.model_tuning(),
                optim.adafactor(1e-3, factored=True, min_dim_size_to_factor=8)),
  }


def _xla_guess(optimizer, trainable, trainable_shardings, mesh):
  """The previous layout: whatever XLA proposes for `optimizer.init`."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  probe = jax.jit(optimizer.init, in_shardings=(trainable_shardings,))
  proposed = probe.lower(trainable).compile().output_shardings
  return jax.tree_util.tree_map(
      lambda s: s if isinstance(s, NamedSharding) and s.mesh == mesh
      else NamedSharding(mesh, PartitionSpec()), proposed)


def _sharded_shapes(tree, shardings):
  import jax  # pylint: disable=g-import-not-at-top
  out = []
  for leaf, sharding in zip(jax.tree_util.tree_leaves(tree),
                            jax.tree_util.tree_leaves(shardings)):
    if any(axis is not None for axis in sharding.spec):
      out.append({"shape": list(leaf.shape),
                  "spec": [str(a) for a in sharding.spec]})
  return out


def main(argv):
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  out = argv[1]
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import trainer_testlib as tl  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from prompt_tuning import building, partitioning
  from prompt_tuning import params as params_lib
  from prompt_tuning.training import losses, opt_state_sharding, trainer
  assert jax.device_count() == 8
  mesh = partitioning.make_mesh(4)
  config = tl.train_config("/unused", batch_size=8)
  batch = partitioning.host_batch_to_global(next(tl.fixed_batches(8)(0)), mesh)
  methods = _methods()
  runs = [(name, name) for name in methods] + [("prefix_xla_guess", "prefix")]
  results = {}
  derived = opt_state_sharding.opt_state_shardings
  for label, name in runs:
    method, optimizer = methods[name]
    opt_state_sharding.opt_state_shardings = (
        _xla_guess if label.endswith("xla_guess") else derived)
    # Abstract arguments carrying their shardings: lowering needs no real arrays.
    model = method.build(tl.tiny_config())
    boxed = building.abstract_params(model)
    shardings = partitioning.param_shardings(boxed, mesh, partitioning.rules())
    params = jax.tree_util.tree_map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
        nn.unbox(boxed), shardings)
    trainable, frozen = params_lib.split(params, method.trainable)
    trainable_shardings, frozen_shardings = params_lib.split(shardings, method.trainable)
    loss_fn = losses.LossFn(model, config.z_loss, config.loss_normalizing_factor,
                            config.enable_dropout)
    steps = trainer.compile_steps(loss_fn, optimizer, mesh, trainable,
                                  trainable_shardings, frozen_shardings,
                                  config.num_microbatches)
    state = jax.tree_util.tree_map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
        trainer.TrainState(jax.ShapeDtypeStruct((), jnp.int32), trainable,
                           jax.eval_shape(optimizer.init, trainable)),
        steps.state_shardings)
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=partitioning.replicated(mesh))
    hlo = steps.lower(state, frozen, batch, rng).compile().as_text()
    results[label] = {
        "gathered": sorted({m.group(1) for m in _ALL_GATHER.finditer(hlo)}),
        "num_all_gathers": len(re.findall(r"\ball-gather(?:-start)?\(", hlo)),
        "trainable": _sharded_shapes(state.trainable, steps.state_shardings.trainable),
        "opt_state": _sharded_shapes(state.opt_state, steps.state_shardings.opt_state),
    }
  opt_state_sharding.opt_state_shardings = derived
  with open(out, "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main(sys.argv)
