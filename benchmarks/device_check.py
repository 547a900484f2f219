r"""The device check: our prompt-tuning step and PEFT's on one accelerator, side by side.

  benchmarks/device_check.sh            (a machine with one NVIDIA GPU: makes a
                                          venv, installs the CUDA extra, runs this)
  python -m benchmarks.device_check [--dry-run] [--out DIR] [--models base,large]

For T5 1.1 base and large (random weights; activations and frozen weights in
bfloat16; batch 32, 512 input tokens + a 100-vector prompt, 8 targets; dropout 0.1
as in training) it measures, for our compiled train step (JAX) and for Hugging Face
PEFT prompt tuning on PyTorch (same shapes, bfloat16 model, `transformers`'
Adafactor):

  step_seconds   median wall time of a step over the timed steps (after warm-up)
  tokens_per_s   B * (T_in + T_out) / step_seconds (the prompt not counted)
  mfu            model FLOPs of a prompt-tuning step (`benchmarks/flops.py`, the
                 same count for both sides) / step_seconds / the device's dense
                 bfloat16 peak (`PEAK_BF16_FLOPS`, by `device_kind`; "n/a" for a
                 device not in the table, e.g. a CPU)
  peak_memory    JAX: `device.memory_stats()['peak_bytes_in_use']`; PyTorch:
                 `torch.cuda.max_memory_allocated()` ("n/a" on CPU)

and calibrates the memory planner: `prompt_tuning.plan.plan` compiles the same step
(one-device mesh, the same config) and its `estimate` is printed next to the
measured JAX peak, with their ratio.

Each side runs in its own worker process (`benchmarks/worker.py`), one after the
other, so neither sees the other's memory; JAX is told not to preallocate the
device (`XLA_PYTHON_CLIENT_PREALLOCATE=false`) so its peak is what the step used.
Results: `device_check.json` and `device_check.md` in `--out`.

`--dry-run` runs the same code on tiny shapes with CPU JAX and CPU PyTorch
(`tests/test_device_check.py`): it checks the pipeline, not the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

from benchmarks import common, flops, weights
from benchmarks.worker import Worker

# Dense (no sparsity) bfloat16 tensor throughput per JAX device, FLOP/s, from the
# vendors' datasheets. A TPU v2/v3 JAX device is one core (half a chip).
PEAK_BF16_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12,   # SXM
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA L4": 121e12,
    "NVIDIA L40S": 362e12,
    "NVIDIA A10": 125e12,
    "NVIDIA A10G": 70e12,
    "NVIDIA GeForce RTX 4090": 165e12,
    "NVIDIA GeForce RTX 3090": 71e12,
    "TPU v3": 61.5e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
}

_MODEL = {"dtype": "bfloat16", "frozen_dtype": "bfloat16"}
FULL = {name: common.Shapes(preset=name, overrides=dict(_MODEL), batch=32, inputs=512,
                            prompt=100, targets=8, reps=1, steps=5)
        for name in ("base", "large")}
DRY = {"tiny": common.Shapes(preset="tiny", overrides={
    "vocab_size": 512, "num_encoder_layers": 1, "num_decoder_layers": 1, **_MODEL},
                             batch=2, inputs=12, prompt=4, targets=4, reps=1, steps=2)}
WARMUP_STEPS = 2


def peak_flops(device_kind: str) -> Optional[float]:
  """The dense bfloat16 peak of a device kind (None when unknown)."""
  return PEAK_BF16_FLOPS.get(device_kind.strip())


def summarize(shapes: common.Shapes, side: Dict[str, Any]) -> Dict[str, Any]:
  """Adds tokens/s and MFU to one side's raw measurements."""
  seconds = statistics.median(side["step_seconds_each"])
  peak = peak_flops(side["device_kind"])
  model_flops = flops.train_step_flops(shapes)["total"]
  side.update(step_seconds=seconds, tokens_per_s=shapes.tokens_per_step / seconds,
              model_flops=model_flops, peak_bf16_flops=peak,
              mfu=model_flops / seconds / peak if peak else None)
  return side


def _timed_steps(step, count: int) -> List[float]:
  out = []
  for _ in range(count):
    start = time.perf_counter()
    step()
    out.append(time.perf_counter() - start)
  return out


class JaxSide:
  """Our prompt-tuning train step (the trainer's `compile_steps`) on device 0."""

  def __init__(self, shapes: Dict[str, Any], plan: bool = True):
    self.shapes = common.Shapes.from_dict(shapes)
    self.plan = plan

  def setup(self) -> Dict[str, Any]:
    import jax  # pylint: disable=g-import-not-at-top
    from prompt_tuning import building, partitioning  # pylint: disable=g-import-not-at-top
    from prompt_tuning import params as params_lib  # pylint: disable=g-import-not-at-top
    from prompt_tuning.methods import prompt  # pylint: disable=g-import-not-at-top
    from prompt_tuning.training import losses, optim, trainer  # pylint: disable=g-import-not-at-top

    shapes = self.shapes
    self.jax = jax
    self.method = prompt.prompt_tuning(length=shapes.prompt)
    self.optimizer = optim.adafactor_prompt_tuning()
    self.device = jax.devices()[0]
    self.mesh = partitioning.make_mesh(1, devices=[self.device])
    self.config = shapes.model_config()
    self.config, params, shardings = building.build_params(
        self.method, self.config, None, jax.random.PRNGKey(0), mesh=self.mesh)
    trainable, frozen = params_lib.split(params, self.method.trainable)
    t_shard, f_shard = params_lib.split(shardings, self.method.trainable)
    del params
    self.train_config = trainer.TrainConfig(
        model_dir="", mixture_or_task_name="device_check",
        task_feature_lengths={"inputs": shapes.inputs, "targets": shapes.targets},
        train_steps=0, batch_size=shapes.batch, enable_dropout=True)
    loss_fn = losses.LossFn(self.method.build(self.config), self.train_config.z_loss,
                            self.train_config.loss_normalizing_factor, True)
    steps = trainer.compile_steps(loss_fn, self.optimizer, self.mesh, trainable,
                                  t_shard, f_shard)
    self.state, self.frozen, self.train = steps.init_state(trainable), frozen, steps.train
    self.batch = partitioning.host_batch_to_global(
        weights.batch(shapes, self.config.vocab_size), self.mesh)
    self.rng = jax.device_put(jax.random.PRNGKey(1), partitioning.replicated(self.mesh))
    start = time.perf_counter()
    for _ in range(WARMUP_STEPS):  # the first one compiles
      self._step()
    return {"warmup_seconds": time.perf_counter() - start}

  def _step(self):
    self.state, metrics = self.train(self.state, self.frozen, self.batch, self.rng)
    self.loss = float(metrics["loss"])  # waits for the step

  def rep(self) -> Dict[str, Any]:
    return {"step_seconds_each": _timed_steps(self._step, self.shapes.steps),
            "loss": self.loss}

  def finish(self) -> Dict[str, Any]:
    stats = self.device.memory_stats() or {}
    out = {"framework": f"JAX {self.jax.__version__}",
           "device_kind": self.device.device_kind, "platform": self.device.platform,
           "peak_memory_bytes": stats.get("peak_bytes_in_use")}
    if self.plan:  # after the measurement: compiling again allocates nothing on device
      from prompt_tuning import plan as plan_lib  # pylint: disable=g-import-not-at-top
      from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
      result = plan_lib.plan(self.config, self.method, self.optimizer, self.train_config,
                             dict(self.train_config.task_feature_lengths), self.mesh,
                             partitioning.rules())
      out["planner_estimate_bytes"] = result["bytes_per_device"]["estimate"]
      out["planner_bytes"] = result["bytes_per_device"]
    return out


class PeftSide:
  """PEFT prompt tuning of `T5ForConditionalGeneration` (random weights, bfloat16)."""

  def __init__(self, shapes: Dict[str, Any]):
    self.shapes = common.Shapes.from_dict(shapes)

  def setup(self) -> Dict[str, Any]:
    import peft  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    from benchmarks import train_peft  # pylint: disable=g-import-not-at-top
    from prompt_tuning.checkpoints.huggingface import to_hf_config  # pylint: disable=g-import-not-at-top

    shapes = self.shapes
    self.torch = torch
    self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if self.device.type == "cpu":
      torch.set_num_threads(train_peft.threads())
    torch.manual_seed(0)
    config = shapes.model_config()
    hf_config = transformers.T5Config(**to_hf_config(config))
    hf_config.use_cache = False
    model = transformers.T5ForConditionalGeneration(hf_config).to(torch.bfloat16)
    model = peft.get_peft_model(model, peft.PromptTuningConfig(
        task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=shapes.prompt))
    self.model = model.to(self.device)
    self.model.train()
    trainable = [p for p in self.model.parameters() if p.requires_grad]
    for p in trainable:  # trainable parameters and optimizer state in float32
      p.data = p.data.float()
    self.optimizer = train_peft.adafactor(trainable)
    batch = weights.batch(shapes, config.vocab_size)
    as_tensor = lambda a: torch.from_numpy(a).long().to(self.device)
    self.inputs = {"input_ids": as_tensor(batch["encoder_input_tokens"]),
                   "attention_mask": torch.ones_like(
                       as_tensor(batch["encoder_input_tokens"])),
                   "labels": as_tensor(batch["decoder_target_tokens"])}
    start = time.perf_counter()
    for _ in range(WARMUP_STEPS):
      self._step()
    return {"warmup_seconds": time.perf_counter() - start}

  def _step(self):
    with self.torch.autocast(self.device.type, dtype=self.torch.bfloat16):
      loss = self.model(**self.inputs).loss
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    self.loss = float(loss.detach())  # waits for the step

  def rep(self) -> Dict[str, Any]:
    if self.device.type == "cuda":
      self.torch.cuda.reset_peak_memory_stats()
    return {"step_seconds_each": _timed_steps(self._step, self.shapes.steps),
            "loss": self.loss}

  def finish(self) -> Dict[str, Any]:
    cuda = self.device.type == "cuda"
    return {"framework": f"PyTorch {self.torch.__version__} + PEFT",
            "device_kind": (self.torch.cuda.get_device_name(self.device) if cuda
                            else "cpu"),
            "platform": self.device.type,
            "peak_memory_bytes": (int(self.torch.cuda.max_memory_allocated(self.device))
                                  if cuda else None)}


def run_sides(sides: Dict[str, Any], overlap: bool) -> Dict[str, Dict[str, Any]]:
  """setup, one timed repetition and finish of each side, each in its own process.

  `sides`: `{name: (target class, kwargs, environment overrides)}`. With `overlap`
  (the CPU dry run) the setups run at once; the timed steps never overlap, and on
  an accelerator each side runs alone (so neither holds device memory then).
  """
  out: Dict[str, Dict[str, Any]] = {}
  started: Dict[str, Worker] = {}
  try:
    for name, (target, kwargs, env) in sides.items():
      worker = Worker(f"benchmarks.device_check:{target}", kwargs, name=target,
                      env=env)
      if overlap:
        worker.send("setup")
        started[name] = worker
      else:
        out[name] = _measure(worker, None)
    setups = {name: worker.receive("setup") for name, worker in started.items()}
    for name, worker in started.items():
      out[name] = _measure(worker, setups[name])
  finally:
    for worker in started.values():
      worker.close()
  return out


def _measure(worker: Worker, setup: Optional[Dict[str, Any]]) -> Dict[str, Any]:
  """The timed repetition and final readings of a worker (set up if `setup` is None)."""
  with worker:
    out = {"setup": setup if setup is not None else worker.request("setup")}
    out.update(worker.request("rep"))
    out.update(worker.request("finish"))
  return out


def check(shapes_by_model: Dict[str, common.Shapes], accelerator: bool,
          log=print) -> Dict[str, Any]:
  """Both sides for every model; the raw and derived numbers."""
  jax_env: Dict[str, Optional[str]] = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  if accelerator:
    jax_env["JAX_PLATFORMS"] = None  # the worker default is CPU: let JAX pick the GPU
  results = {}
  for name, shapes in shapes_by_model.items():
    log(f"== {name}: batch {shapes.batch}, {shapes.inputs} + {shapes.prompt} prompt "
        f"-> {shapes.targets} tokens")
    kwargs = {"shapes": shapes.to_dict()}
    sides = run_sides({"jax": ("JaxSide", kwargs, jax_env),
                       "peft": ("PeftSide", kwargs, {})}, overlap=not accelerator)
    row = {"shapes": shapes.to_dict()}
    for side in ("jax", "peft"):
      row[side] = summarize(shapes, sides[side])
      log(f"   {side:4s} {row[side]['step_seconds'] * 1e3:9.1f} ms/step")
    measured, estimate = (row["jax"].get("peak_memory_bytes"),
                          row["jax"].get("planner_estimate_bytes"))
    row["planner_calibration"] = {
        "estimate_bytes": estimate, "measured_peak_bytes": measured,
        "measured_over_estimate": measured / estimate if measured and estimate else None}
    log(f"   planner estimate {_gib(estimate)} vs measured peak {_gib(measured)}")
    results[name] = row
  return results


def _gib(value: Optional[float]) -> str:
  return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def _num(value: Optional[float], fmt: str) -> str:
  return "n/a" if value is None else format(value, fmt)


def markdown(results: Dict[str, Any], meta: Dict[str, Any]) -> str:
  lines = [f"# Device check ({'dry run, tiny shapes' if meta['dry_run'] else 'full'})",
           "", f"Command: `{meta['command']}`  ",
           f"Host: {meta['machine']['cpu']}, commit {meta['machine']['commit']}", "",
           "| model | side | device | ms / step | tokens / s | MFU (bf16 peak) | "
           "peak memory |", "|---|---|---|---|---|---|---|"]
  for name, row in results.items():
    for side in ("jax", "peft"):
      r = row[side]
      lines.append(
          f"| {name} | {r['framework']} | {r['device_kind']} | "
          f"{r['step_seconds'] * 1e3:.1f} | {r['tokens_per_s']:.0f} | "
          f"{_num(r['mfu'] * 100 if r['mfu'] is not None else None, '.1f')}"
          f"{'%' if r['mfu'] is not None else ''} | {_gib(r['peak_memory_bytes'])} |")
  lines += ["", "Planner calibration (JAX side, one device):", "",
            "| model | planner estimate | measured peak | measured / estimate |",
            "|---|---|---|---|"]
  for name, row in results.items():
    c = row["planner_calibration"]
    lines.append(f"| {name} | {_gib(c['estimate_bytes'])} | "
                 f"{_gib(c['measured_peak_bytes'])} | "
                 f"{_num(c['measured_over_estimate'], '.2f')} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dry-run", action="store_true",
                      help="tiny shapes, CPU JAX and CPU PyTorch (the tests' mode)")
  parser.add_argument("--out", default=os.path.join(common.REPO, "benchmarks",
                                                    "results", "device_check"))
  parser.add_argument("--models", default="base,large",
                      help="comma-separated presets of the full run")
  args = parser.parse_args(argv)
  if args.dry_run:
    shapes = DRY
  else:
    unknown = [m for m in args.models.split(",") if m not in FULL]
    if unknown:
      parser.error(f"--models: {unknown} not in {sorted(FULL)}")
    shapes = {m: FULL[m] for m in args.models.split(",")}
  start = time.perf_counter()
  results = check(shapes, accelerator=not args.dry_run)
  meta = {"dry_run": args.dry_run, "command": common.command_line(),
          "machine": common.machine(),
          "seconds": time.perf_counter() - start}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "device_check.json").write_text(json.dumps({"meta": meta, "results": results},
                                                    indent=1))
  text = markdown(results, meta)
  (out / "device_check.md").write_text(text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
