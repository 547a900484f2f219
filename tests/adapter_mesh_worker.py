"""Subprocess body of the model-parallel adapter test (tests/test_methods_lora.py):
JAX must start with 4 host devices. Places LoRA and IA3 parameters with the rule
table on a (data=1, model=4) mesh, runs the loss and a gradient, and prints JSON:
the factors' PartitionSpecs and the losses next to the unsharded ones."""
import functools
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# This worktree's package first (the script's own directory is tests/).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top

from prompt_tuning import partitioning  # noqa: E402  pylint: disable=g-import-not-at-top
from prompt_tuning.methods import ia3, lora  # noqa: E402  pylint: disable=g-import-not-at-top
from prompt_tuning.params import flatten  # noqa: E402  pylint: disable=g-import-not-at-top

from methods_testlib import batch, loss, one_layer_config, random_params  # noqa: E402  pylint: disable=g-import-not-at-top


def main():
  config = one_layer_config()
  mesh = partitioning.make_mesh(model_parallel=4)
  enc, dec, tgt = batch()
  out = {}
  for name, method in (("lora", lora.lora(rank=2, targets=(r".*attention/(query|out)",))),
                       ("ia3", ia3.ia3())):
    model = method.build(config)
    boxed = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), enc, dec)["params"])
    shardings = partitioning.param_shardings(boxed, mesh, partitioning.rules())
    params = random_params(model, enc, dec)
    placed = jax.tree_util.tree_map(jax.device_put, params, shardings)
    fn = functools.partial(loss, model)
    sharded = float(jax.jit(fn)(placed, enc, dec, tgt))
    grads = jax.jit(jax.grad(fn))(placed, enc, dec, tgt)
    specs = {p: [str(a) for a in s.spec] for p, s in flatten(shardings).items()
             if "lora" in p or "ia3" in p}
    grad_specs = {p: [str(a) for a in g.sharding.spec] for p, g in flatten(grads).items()
                  if "lora" in p or "ia3" in p}
    out[name] = {"specs": specs, "grad_specs": grad_specs, "sharded": sharded,
                 "single": float(jax.jit(fn)(params, enc, dec, tgt)),
                 "devices": len(jax.devices()),
                 "grad_finite": bool(all(np.all(np.isfinite(np.asarray(g)))
                                         for g in jax.tree_util.tree_leaves(grads)))}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
