r"""Will a run fit? `python -m prompt_tuning.plan` compiles (never runs) its train step.

  python -m prompt_tuning.plan \
    --gin_file=models/t5_1_1_xxl.gin --gin_file=runs/prompt_finetune.gin \
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 8}" \
    --devices=8 --mesh=1,8 --memory_gb=24 [--json]

Same gin flags as `train` (MODEL_DIR, the task and INITIAL_CHECKPOINT_PATH may be
left out: nothing is read or written), plus:
  --devices N      simulated devices (XLA:CPU host devices; the command re-executes
                   itself with XLA_FLAGS set before JAX starts);
  --mesh D,M       the (data, model) mesh; default: gin's partitioning.make_mesh;
  --memory_gb G    the device memory to compare with (GiB);
  --json           one JSON object on stdout instead of the table.

Parameters are abstract (`jax.eval_shape`, no checkpoint read, nothing allocated),
so XXL plans fit in a few GiB of host RAM; compiling XXL takes minutes.

Per device it reports:
  frozen          the frozen parameters' shards (at `T5Config.frozen_dtype`);
  trainable+opt   trainable parameters and optimizer state shards;
  residuals       what the forward pass saves for the backward pass: JAX's saved
                  residuals of the loss (under the model's `remat_policy`), sharded
                  as XLA shards them when they are the outputs of a compiled forward
                  pass (its output size); the global count is reported too;
  layer           one layer's residuals without remat (the larger of an encoder and
                  a decoder layer): what the backward pass recomputes at once;
  xla_temp        `compiled.memory_analysis().temp_size_in_bytes` of the train step;
  estimate        frozen + trainable+opt + residuals + layer (layer only with remat)
                  + the batch. XLA:CPU schedules without rematerialization in mind
                  and its temp size overstates a remat run's peak on GPU/TPU, so the
                  estimate, not xla_temp, decides `fits`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from typing import Any, Dict, Optional, Sequence

_GUARD = "PROMPT_TUNING_PLAN_DEVICES"


def _requested_devices(argv: Sequence[str]) -> Optional[int]:
  for i, arg in enumerate(argv):
    if arg.startswith("--devices="):
      return int(arg.split("=", 1)[1])
    if arg == "--devices" and i + 1 < len(argv):
      return int(argv[i + 1])
  return None


def reexec_with_devices(argv: Sequence[str]) -> None:
  """Re-executes this command with N simulated CPU devices (before JAX starts)."""
  devices = _requested_devices(argv)
  if devices is None or os.environ.get(_GUARD) == str(devices):
    return
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", ""))
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{_GUARD: str(devices)})
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  os.execve(sys.executable, [sys.executable, "-m", "prompt_tuning.plan"] +
            list(argv[1:]), env)


# Heavy imports only after the re-exec decision (JAX reads XLA_FLAGS when it starts).
import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import gin  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from prompt_tuning import building, cli, configurables, partitioning  # pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_tuning import train as train_entry  # pylint: disable=g-import-not-at-top,wrong-import-position,unused-import  (registers `train`)
from prompt_tuning import params as params_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_tuning.params import flatten, unflatten  # pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_tuning.training import losses, trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_tuning.models.t5 import DecoderLayer, EncoderLayer  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_integer("devices", None, "Simulated devices (default: the real ones).")
flags.DEFINE_string("mesh", None, "data,model mesh shape (default: gin's make_mesh).")
flags.DEFINE_float("memory_gb", None, "Device memory in GiB to compare with.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
FLAGS = flags.FLAGS

GIB = 2.0**30
# Macros a train gin requires that planning does not use (nothing is read/written).
_UNUSED_MACROS = {"MODEL_DIR": "'/nonexistent/plan'", "MIXTURE_OR_TASK_NAME": "'plan'",
                  "INITIAL_CHECKPOINT_PATH": "None", "TRAIN_STEPS": "1"}


def _bound(selector: str) -> Any:
  """The value gin gives `selector` (e.g. 'train.method'), references evaluated."""
  value = gin.query_parameter(selector)
  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn() if value.evaluate else value
  if isinstance(value, gin.config.MacroReference):  # `%NAME`
    return cli.macro(value.name)
  return value


def shard_bytes(tree: Any, shardings: Any) -> int:
  """Bytes of one device's shard of every leaf (`[shape] / sharding`)."""
  total = 0
  for leaf, sharding in zip(jax.tree_util.tree_leaves(tree),
                            jax.tree_util.tree_leaves(shardings)):
    shape = sharding.shard_shape(leaf.shape)
    total += int(np.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
  return total


def _sds(tree: Any, shardings: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _residual_outputs(fn):
  """`fn(*args) -> loss`: the residuals `jax.vjp` keeps w.r.t. `args[0]`, without
  the arguments themselves (parameters and the batch are counted apart)."""

  def residuals(*values):
    inputs = {id(x) for x in jax.tree_util.tree_leaves(values)}
    _, pullback = jax.vjp(lambda t: fn(t, *values[1:]), values[0])
    return [x for x in jax.tree_util.tree_leaves(pullback) if id(x) not in inputs]

  return residuals


def _compiled_output_bytes(fn, args, mesh, axis_rules) -> int:
  """Per-device output bytes of `fn` compiled on `mesh` (activations constrained)."""
  with partitioning.activation_partitioning(mesh, axis_rules):
    compiled = jax.jit(fn).lower(*args).compile()
  return int(compiled.memory_analysis().output_size_in_bytes)


def _layer_residuals(config, batch: int, enc_len: int, dec_len: int, mesh,
                     axis_rules) -> Dict[str, int]:
  """Per-device saved residuals of one encoder and one decoder layer, no remat."""
  cfg = config.replace(remat_policy="none")
  h, n = cfg.emb_dim, cfg.num_heads
  dtype = cfg.dtype
  act = lambda length: jax.ShapeDtypeStruct((batch, length, h), dtype)
  replicated = partitioning.replicated(mesh)
  out = {}
  cases = {
      "encoder": (EncoderLayer(cfg), (act(enc_len),
                                      jax.ShapeDtypeStruct((batch, 1, 1, enc_len), bool),
                                      jax.ShapeDtypeStruct((1, n, enc_len, enc_len),
                                                           dtype))),
      "decoder": (DecoderLayer(cfg), (act(dec_len), act(enc_len),
                                      jax.ShapeDtypeStruct((batch, 1, dec_len, dec_len),
                                                           bool),
                                      jax.ShapeDtypeStruct((batch, 1, 1, enc_len), bool),
                                      jax.ShapeDtypeStruct((1, n, dec_len, dec_len),
                                                           dtype))),
  }
  for name, (layer, inputs) in cases.items():
    boxed = jax.eval_shape(lambda r, *i, l=layer: l.init(r, *i),
                           jax.random.PRNGKey(0), *inputs)["params"]
    shardings = partitioning.param_shardings(boxed, mesh, axis_rules)
    params = _sds(nn.unbox(boxed), shardings)
    frozen = jax.tree_util.tree_map(
        lambda p: jax.ShapeDtypeStruct(p.shape, cfg.frozen_dtype, sharding=p.sharding),
        params)
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
        partitioning.DATA if batch % mesh.shape[partitioning.DATA] == 0 else None))
    placed = [jax.ShapeDtypeStruct(x.shape, x.dtype,
                                   sharding=batch_sharding if x.shape[0] == batch
                                   else replicated) for x in inputs]

    def loss(x, p, *rest, l=layer):
      return jnp.sum(l.apply({"params": p}, x, *rest).astype(jnp.float32))

    # Differentiate w.r.t. the layer input (as inside the model): the residuals
    # are what the layer keeps for the backward pass.
    out[name] = _compiled_output_bytes(_residual_outputs(loss), [placed[0], frozen]
                                       + placed[1:], mesh, axis_rules)
  return out


def plan(model_config, method, optimizer, train_config, feature_lengths: Dict[str, int],
         mesh, axis_rules, memory_gb: Optional[float] = None) -> Dict[str, Any]:
  """Compiles the train step on `mesh` from abstract values; returns the numbers."""
  model = method.build(model_config)
  boxed = building.abstract_params(model)
  shardings = partitioning.param_shardings(boxed, mesh, axis_rules)
  flat = flatten(_sds(nn.unbox(boxed), shardings))
  building.cast_frozen(flat, method, model_config.frozen_dtype)
  params = unflatten(flat)
  trainable, frozen = params_lib.split(params, method.trainable)
  trainable_shardings, frozen_shardings = params_lib.split(shardings, method.trainable)
  loss_fn = losses.LossFn(model, train_config.z_loss,
                          train_config.loss_normalizing_factor,
                          train_config.enable_dropout)
  steps_loss = dataclasses.replace(loss_fn, enable_dropout=False)
  steps = trainer.compile_steps(loss_fn, optimizer, mesh, trainable,
                                trainable_shardings, frozen_shardings,
                                train_config.num_microbatches, axis_rules)
  opt_state = jax.eval_shape(optimizer.init, trainable)
  state = trainer.TrainState(jax.ShapeDtypeStruct((), jnp.int32), trainable, opt_state)
  batch_size = train_config.batch_size
  enc, dec = feature_lengths["inputs"], feature_lengths["targets"]
  batch_sharding = partitioning.batch_sharding(mesh)
  tokens = lambda length: jax.ShapeDtypeStruct((batch_size, length), jnp.int32,
                                               sharding=batch_sharding)
  batch = {"encoder_input_tokens": tokens(enc), "decoder_input_tokens": tokens(dec),
           "decoder_target_tokens": tokens(dec), "decoder_loss_weights": tokens(dec)}
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
  compiled = steps.lower(state, frozen, batch, rng).compile()
  memory = compiled.memory_analysis()

  # Saved residuals of the loss: JAX's global count, and per device as the outputs
  # of the compiled forward pass.
  micro = int(getattr(train_config, "num_microbatches", None) or 1)
  rows = batch_size // micro
  micro_batch = {k: jax.ShapeDtypeStruct((rows,) + v.shape[1:], v.dtype,
                                         sharding=batch_sharding)
                 for k, v in batch.items()}

  def loss_fn(trainable_, frozen_, batch_):  # the step's loss, without dropout
    return steps_loss(params_lib.merge(trainable_, frozen_), batch_)[0]

  from jax._src import ad_checkpoint  # pylint: disable=g-import-not-at-top
  with partitioning.activation_partitioning(mesh, axis_rules):
    saved = ad_checkpoint.saved_residuals(
        lambda t, f, b: loss_fn(t, f, b), trainable, frozen, micro_batch)
  global_residuals = sum(int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize
                         for a, where in saved if "from the argument" not in where)
  residuals = _compiled_output_bytes(_residual_outputs(loss_fn),
                                     [trainable, frozen, micro_batch], mesh, axis_rules)
  prompt_length = _encoder_length(model, enc) - enc
  layers = _layer_residuals(model_config, rows, enc + prompt_length, dec, mesh,
                            axis_rules)
  layer = max(layers.values()) if model_config.remat_policy != "none" else 0

  frozen_bytes = shard_bytes(frozen, frozen_shardings)
  trainable_bytes = shard_bytes(trainable, trainable_shardings)
  opt_bytes = shard_bytes(opt_state, steps.state_shardings.opt_state)
  batch_bytes = shard_bytes(batch, jax.tree_util.tree_map(lambda _: batch_sharding,
                                                          batch))
  estimate = frozen_bytes + trainable_bytes + opt_bytes + residuals + layer + batch_bytes
  result = {
      "model": _model_name(model_config), "method": method.name,
      "devices": int(mesh.size), "mesh": dict(mesh.shape),
      "batch_size": batch_size, "num_microbatches": micro,
      "feature_lengths": dict(feature_lengths), "prompt_length": prompt_length,
      "remat_policy": model_config.remat_policy,
      "scan_layers": bool(getattr(model_config, "scan_layers", False)),
      "frozen_dtype": jnp.dtype(model_config.frozen_dtype).name,
      "activation_dtype": jnp.dtype(model_config.dtype).name,
      "axis_rules": [list(r) if not isinstance(r[1], tuple) else [r[0], list(r[1])]
                     for r in axis_rules],
      "bytes_per_device": {
          "frozen": frozen_bytes, "trainable": trainable_bytes,
          "optimizer_state": opt_bytes, "batch": batch_bytes,
          "saved_residuals": residuals, "largest_layer_residuals": max(layers.values()),
          "recompute": layer, "estimate": estimate,
          "xla_argument": int(memory.argument_size_in_bytes),
          "xla_output": int(memory.output_size_in_bytes),
          "xla_alias": int(memory.alias_size_in_bytes),
          "xla_temp": int(memory.temp_size_in_bytes)},
      "saved_residuals_global": global_residuals,
  }
  if memory_gb is not None:
    result["memory_gb"] = memory_gb
    result["fits"] = bool(estimate <= memory_gb * GIB)
  return result


def _encoder_length(model, enc: int) -> int:
  """T' of the encoder output for T = `enc` input tokens (prompts add P)."""
  out = jax.eval_shape(
      lambda r: model.init_with_output(r, jnp.ones((1, enc), jnp.int32),
                                       method=model.encode)[0],
      jax.random.PRNGKey(0))
  return int(out[0].shape[1])


def _model_name(config) -> str:
  from prompt_tuning.models.config import PRESETS  # pylint: disable=g-import-not-at-top
  for name, preset in PRESETS.items():
    if all(getattr(preset, f) == getattr(config, f) for f in
           ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
            "num_encoder_layers", "num_decoder_layers")):
      return name
  return "custom"


def format_table(result: Dict[str, Any]) -> str:
  b = result["bytes_per_device"]
  gib = lambda n: f"{n / GIB:8.2f} GiB"
  lines = [
      f"{result['model']} / {result['method']}: batch {result['batch_size']} "
      f"({result['num_microbatches']} microbatch(es)), inputs "
      f"{result['feature_lengths']['inputs']} + prompt {result['prompt_length']}, "
      f"targets {result['feature_lengths']['targets']}; mesh {result['mesh']}; "
      f"remat {result['remat_policy']}, frozen {result['frozen_dtype']}, activations "
      f"{result['activation_dtype']}",
      "per device:",
      f"  frozen parameters         {gib(b['frozen'])}",
      f"  trainable + optimizer     {gib(b['trainable'] + b['optimizer_state'])}",
      f"  saved residuals           {gib(b['saved_residuals'])}  "
      f"(JAX's global count {result['saved_residuals_global'] / GIB:.2f} GiB)",
      f"  one layer's recompute     {gib(b['recompute'])}",
      f"  batch                     {gib(b['batch'])}",
      f"  estimate                  {gib(b['estimate'])}",
      f"  XLA temp (CPU, no remat)  {gib(b['xla_temp'])}",
  ]
  if "fits" in result:
    lines.append(f"  fits {result['memory_gb']:g} GiB: "
                 f"{'yes' if result['fits'] else 'NO'}")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise cli.app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
  for name in cli.missing_macros(list(_UNUSED_MACROS)):
    gin.parse_config(f"{name} = {_UNUSED_MACROS[name]}")
  cli.check_required_macros(["TASK_FEATURE_LENGTHS"])
  train_config = _bound("train.config")
  devices = jax.devices()
  if FLAGS.devices is not None and len(devices) != FLAGS.devices:
    raise cli.app.UsageError(f"--devices={FLAGS.devices} but JAX sees {len(devices)} "
                             "devices; run `python -m prompt_tuning.plan` directly.")
  if FLAGS.mesh:
    data, model = (int(x) for x in FLAGS.mesh.split(","))
    if data * model > len(devices):
      raise cli.app.UsageError(f"--mesh={FLAGS.mesh} needs {data * model} devices; "
                               f"--devices={len(devices)}.")
    mesh = partitioning.make_mesh(model, devices=devices[:data * model])
  else:
    mesh = configurables.make_mesh()
  partitioning.check_batch_size(train_config.batch_size, mesh)
  result = plan(_bound("train.model_config"), _bound("train.method"),
                _bound("train.optimizer"), train_config,
                dict(train_config.task_feature_lengths), mesh, configurables.axis_rules(),
                FLAGS.memory_gb)
  print(json.dumps(result, indent=1) if FLAGS.json else format_table(result))


def console_main():
  reexec_with_devices(sys.argv)
  cli.run(main)


if __name__ == "__main__":
  console_main()
