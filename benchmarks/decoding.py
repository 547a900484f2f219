"""Decoding throughput: ours vs Hugging Face `generate`, and a mixed prompt bank.

Two comparisons in one run, on one set of random T5 1.1 weights (default: preset
'small', B=8 examples of 128 input tokens, 32 greedy tokens):

  1. `prompt_tuning.models.decoding.greedy_decode` (one jitted while_loop, key/value
     cache) vs `transformers.T5ForConditionalGeneration.generate` (greedy, cache)
     in PyTorch on the CPU, same weights (written once as a Hugging Face
     directory by `benchmarks/weights.py`, read by both). The decoded ids are
     compared too: they must agree.
  2. A batch mixing K=8 prompts of a `PromptBank` (each example its own prompt,
     chosen inside the compiled function) vs a batch with one prompt-tuning
     prompt (`methods.prompt.Prompt`, P=100); also vs the same bank with every
     example on prompt 0.

Every contender runs in its own worker process; repetitions are interleaved
(A, B, C, … per repetition) so load drifts of a shared machine hit all alike.
Each repetition records wall time and the process's CPU time (all its threads):
CPU seconds measure the work independent of how the scheduler shares the cores.

Threads: by default every contender is single-threaded (XLA:
`--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`; PyTorch:
`torch.set_num_threads(1)`), which compares the implementations rather than
the machine's scheduler: on an oversubscribed machine PyTorch's OpenMP workers
spin-wait and can slow down by an order of magnitude. `--threads all` gives both
every usable core.

  python benchmarks/decoding.py            # writes benchmarks/results/decoding.json
  python benchmarks/decoding.py --quick    # tiny shapes, seconds (structure check)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict

if __package__ in (None, ""):  # `python benchmarks/decoding.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common, weights  # pylint: disable=g-import-not-at-top
from benchmarks.worker import Worker  # pylint: disable=g-import-not-at-top

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _timed(fn) -> Dict[str, float]:
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return {"seconds": time.perf_counter() - wall,
          "cpu_seconds": time.process_time() - cpu}


# ------------------------------------------------------------------------------------
# Contenders (run inside worker processes).
# ------------------------------------------------------------------------------------


class OursDecode:
  """Our cached greedy decoding; `mode` 'plain' (no prompt), 'prompt' (one [P, H]
  prompt-tuning prompt) or 'bank' (K prompts; each rep times a mixed batch and a
  batch all on prompt 0 with the same compiled function)."""

  def __init__(self, shapes: Dict[str, Any], directory: str, mode: str = "plain"):
    self.shapes = common.Shapes.from_dict(shapes)
    self.directory = directory
    self.mode = mode

  def setup(self) -> Dict[str, Any]:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
    from prompt_tuning.models import decoding  # pylint: disable=g-import-not-at-top
    from prompt_tuning.methods import bank as bank_lib  # pylint: disable=g-import-not-at-top
    from prompt_tuning.params import with_params  # pylint: disable=g-import-not-at-top
    from prompt_tuning.methods.prompt import Prompt  # pylint: disable=g-import-not-at-top
    from prompt_tuning.models.t5 import Transformer  # pylint: disable=g-import-not-at-top

    config, params = checkpoints.load(os.path.join(self.directory, weights.MODEL_DIR))
    config = config.replace(dropout_rate=0.0)
    batch = self.shapes.batch
    self.indices = {}
    if self.mode == "plain":
      model = Transformer(config)
    elif self.mode == "prompt":
      prompt = np.load(os.path.join(self.directory, weights.PROMPT_FILE))
      model = Transformer(config, prompt=Prompt(length=prompt.shape[0]))
      params = with_params(params, {"encoder/prompt/prompt": prompt})
    elif self.mode == "encoder":
      model = Transformer(config)
    elif self.mode == "bank":
      stacked = np.load(os.path.join(self.directory, weights.BANK_FILE))  # [K, P, H]
      bank, bank_params = bank_lib.from_prompts(list(stacked))
      model = Transformer(config, prompt=bank)
      params = bank_lib.with_bank(params, bank_params)
      self.indices = {"mixed": np.arange(batch, dtype=np.int32) % len(stacked),
                      "one_prompt": np.zeros(batch, np.int32)}
    else:
      raise ValueError(f"Unknown mode {self.mode!r}: plain | prompt | bank | "
                       "encoder.")
    params = jax.tree_util.tree_map(jnp.asarray, params)
    tokens = jnp.asarray(weights.batch(self.shapes, config.vocab_size)[
        "encoder_input_tokens"])
    length = self.shapes.decode_length

    if self.mode == "encoder":  # what both sides spend before the first token
      encode = jax.jit(lambda p, t: decoding.encode(model, p, t)[0])

      def run(index=None):
        del index
        return encode(params, tokens).block_until_ready()
    else:
      def run(index=None):
        return decoding.greedy_decode(model, params, tokens, max_decode_length=length,
                                      prompt_index=index).block_until_ready()

    self.run = run
    first = {}
    outputs = None
    for name in (self.indices or {"": None}):
      start = time.perf_counter()
      outputs = run(self.indices.get(name))
      first[name or self.mode] = time.perf_counter() - start
    return {"first_call_seconds": first, "tokens": np.asarray(outputs).tolist(),
            "jax_version": jax.__version__}

  def rep(self) -> Dict[str, Any]:
    if not self.indices:
      return _timed(self.run)
    return {name: _timed(lambda i=index: self.run(i))
            for name, index in self.indices.items()}

  def finish(self) -> Dict[str, Any]:
    return {"peak_rss_mib": common.lifetime_peak_rss_mib()}


class MemoryStream:
  """The machine's memory read rate: a jitted sum over a 512 MiB float32 array.

  Greedy decoding at batch 8 reads every decoder kernel and the output embedding
  at each step and does little arithmetic per byte, so bytes per step over this
  rate is the floor of a step's time on this machine, for any framework.
  """

  def __init__(self, shapes: Dict[str, Any], directory: str, mib: int = 512):
    del shapes, directory
    self.mib = mib

  def setup(self) -> Dict[str, Any]:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    x = jnp.ones((self.mib * 2**18,), jnp.float32)
    total = jax.jit(jnp.sum)
    self.run = lambda: total(x).block_until_ready()
    self.run()
    return {"bytes": int(x.size) * 4}

  def rep(self) -> Dict[str, Any]:
    return _timed(self.run)

  def finish(self) -> Dict[str, Any]:
    return {}


class HFGenerate:
  """`T5ForConditionalGeneration.generate`, greedy with its cache, PyTorch CPU
  (`part='encoder'`: the encoder forward alone, same inputs)."""

  def __init__(self, shapes: Dict[str, Any], directory: str, threads: int = 1,
               part: str = "generate"):
    self.shapes = common.Shapes.from_dict(shapes)
    self.directory = directory
    self.threads = threads
    self.part = part

  def setup(self) -> Dict[str, Any]:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(self.threads)
    model = transformers.T5ForConditionalGeneration.from_pretrained(
        os.path.join(self.directory, weights.MODEL_DIR)).eval()
    tokens = torch.from_numpy(weights.batch(self.shapes, model.config.vocab_size)[
        "encoder_input_tokens"]).long()
    mask = torch.ones_like(tokens)
    length = self.shapes.decode_length

    def run():
      with torch.inference_mode():
        return model.generate(input_ids=tokens, attention_mask=mask, do_sample=False,
                              num_beams=1, max_new_tokens=length, use_cache=True)

    self.run = run
    if self.part == "encoder":
      def run_encoder():
        with torch.inference_mode():
          return model.encoder(input_ids=tokens, attention_mask=mask)
      self.run = run_encoder
      start = time.perf_counter()
      run_encoder()
      return {"first_call_seconds": time.perf_counter() - start,
              "torch_threads": torch.get_num_threads()}
    start = time.perf_counter()
    out = run()
    first = time.perf_counter() - start
    out = out[:, 1:]  # drop the decoder start token
    if out.shape[1] < length:  # generation stopped early for every example
      out = torch.nn.functional.pad(out, (0, length - out.shape[1]))
    return {"first_call_seconds": first, "tokens": out.tolist(),
            "torch_threads": torch.get_num_threads(),
            "transformers_version": transformers.__version__}

  def rep(self) -> Dict[str, Any]:
    return _timed(self.run)

  def finish(self) -> Dict[str, Any]:
    return {"peak_rss_mib": common.lifetime_peak_rss_mib()}


# ------------------------------------------------------------------------------------
# The runner.
# ------------------------------------------------------------------------------------


def _agreement(a, b) -> float:
  pairs = [(x, y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b)]
  return sum(x == y for x, y in pairs) / max(len(pairs), 1)


# Contenders that profile the others (no decoded tokens of their own).
PROFILE = ("ours_encoder", "hf_encoder", "memory_stream")


def _decode_loop(samples, setups, prepared, shapes) -> Dict[str, float]:
  """Where a greedy batch's time goes: the encoder, then L steps of the loop.

  A step's floor is the bytes it must read (every decoder kernel and the output
  embedding, float32) over the measured memory read rate.
  """
  median = lambda name: common.summarize(samples[name]["seconds"])["median"]
  length = shapes.decode_length
  ours_encoder, hf_encoder = median("ours_encoder"), median("hf_encoder")
  ours_step = (median("ours_greedy") - ours_encoder) / length
  hf_step = (median("hf_generate") - hf_encoder) / length
  rate = setups["memory_stream"]["bytes"] / median("memory_stream")
  step_bytes = int(prepared.get("decoder_step_bytes", 0))
  floor = step_bytes / rate
  return {"ours_encoder_s": ours_encoder, "hf_encoder_s": hf_encoder,
          "ours_step_ms": 1e3 * ours_step, "hf_step_ms": 1e3 * hf_step,
          "floor_step_ms": 1e3 * floor, "bytes_per_step": step_bytes,
          "read_gb_per_s": rate / 1e9,
          "loop_ratio": hf_step / ours_step if ours_step > 0 else float("nan"),
          "ratio_if_loop_at_floor": median("hf_generate") / (
              ours_encoder + length * floor)}


def main(argv=None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny shapes: checks that everything runs (seconds)")
  parser.add_argument("--reps", type=int, default=None)
  parser.add_argument("--threads", choices=("1", "all"), default="1")
  parser.add_argument("--output", default=os.path.join(RESULTS, "decoding.json"))
  args = parser.parse_args(argv)

  shapes = common.QUICK if args.quick else common.FULL
  reps = args.reps or (shapes.reps if args.quick else 3)
  usable = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1)
  torch_threads = 1 if args.threads == "1" else usable
  if args.threads == "1":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                               SINGLE_THREAD_XLA).strip()
  started = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix="decoding_bench_") as directory:
    with Worker("benchmarks.weights:Prepare",
                {"shapes": shapes.to_dict(), "directory": directory}) as prepare:
      prepared = prepare.request("setup")
      prepare.request("finish")
    kwargs = {"shapes": shapes.to_dict(), "directory": directory}
    contenders = {
        "ours_greedy": Worker("benchmarks.decoding:OursDecode",
                              dict(kwargs, mode="plain"), "ours_greedy"),
        "hf_generate": Worker("benchmarks.decoding:HFGenerate",
                              dict(kwargs, threads=torch_threads), "hf_generate"),
        "ours_single_prompt": Worker("benchmarks.decoding:OursDecode",
                                     dict(kwargs, mode="prompt"), "ours_single_prompt"),
        "ours_bank": Worker("benchmarks.decoding:OursDecode", dict(kwargs, mode="bank"),
                            "ours_bank"),
        # Profile: the encoders alone (the rest is the per-token loop) and the
        # memory read rate (the loop's floor).
        "ours_encoder": Worker("benchmarks.decoding:OursDecode",
                               dict(kwargs, mode="encoder"), "ours_encoder"),
        "hf_encoder": Worker("benchmarks.decoding:HFGenerate",
                             dict(kwargs, threads=torch_threads, part="encoder"),
                             "hf_encoder"),
        "memory_stream": Worker("benchmarks.decoding:MemoryStream",
                                {"shapes": None, "directory": None,
                                 "mib": 16 if args.quick else 512}, "memory_stream"),
    }
    try:
      setups = {name: w.request("setup") for name, w in contenders.items()}
      samples: Dict[str, Dict[str, list]] = {}
      for _ in range(reps):
        for name, worker in contenders.items():
          answer = worker.request("rep")
          timings = ({name: answer} if "seconds" in answer else
                     {f"{name}_{key}": value for key, value in answer.items()})
          for key, timing in timings.items():
            entry = samples.setdefault(key, {"seconds": [], "cpu_seconds": []})
            entry["seconds"].append(timing["seconds"])
            entry["cpu_seconds"].append(timing["cpu_seconds"])
      finals = {name: w.request("finish") for name, w in contenders.items()}
    finally:
      for worker in contenders.values():
        worker.close()

  def ratios(faster: str, slower: str) -> Dict[str, Any]:
    """Throughput of `faster` over `slower` = slower time / faster time."""
    return {"wall": common.ratio(samples[slower]["seconds"], samples[faster]["seconds"]),
            "cpu": common.ratio(samples[slower]["cpu_seconds"],
                                samples[faster]["cpu_seconds"])}

  tokens = shapes.batch * shapes.decode_length
  results = {name: {"wall": common.summarize(s["seconds"]),
                    "cpu": common.summarize(s["cpu_seconds"])}
             for name, s in samples.items()}
  for name, result in results.items():
    if name not in PROFILE:
      result["tokens_per_second"] = tokens / result["wall"]["median"]
  record = {
      "benchmark": "decoding",
      "command": common.command_line(),
      "shapes": shapes.to_dict(),
      "reps": reps,
      "threads": {"setting": args.threads, "torch": torch_threads,
                  "xla_flags": os.environ.get("XLA_FLAGS", "")},
      "machine": common.machine(),
      "load_average": common.load_average(),
      "model": {"num_params": prepared.get("num_params")},
      "results": results,
      "ratios": {
          "ours_greedy_vs_hf_generate": ratios("ours_greedy", "hf_generate"),
          "bank_mixed_vs_single_prompt": ratios("ours_bank_mixed",
                                                "ours_single_prompt"),
          "bank_mixed_vs_bank_one_prompt": ratios("ours_bank_mixed",
                                                  "ours_bank_one_prompt"),
      },
      "decode_loop": _decode_loop(samples, setups, prepared, shapes),
      "targets": {"ours_greedy_vs_hf_generate": 2.0,
                  "bank_mixed_vs_single_prompt": 0.95},
      "checks": {"greedy_tokens_agree_with_hf": _agreement(
          setups["ours_greedy"]["tokens"], setups["hf_generate"]["tokens"])},
      "setup": {name: {k: v for k, v in s.items() if k != "tokens"}
                for name, s in setups.items()},
      "finish": finals,
      "total_seconds": time.perf_counter() - started,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(record, f, indent=2)

  print(f"decoding benchmark ({'quick' if args.quick else 'full'}, {reps} reps, "
        f"threads={args.threads}, load {record['load_average']}):")
  for name, result in results.items():
    print(f"  {name:28s} median {result['wall']['median']:.3f} s wall, "
          f"{result['cpu']['median']:.3f} s cpu" + (
              f", {result['tokens_per_second']:.0f} tokens/s"
              if "tokens_per_second" in result else ""))
  for name, ratio in record["ratios"].items():
    target = record["targets"].get(name)
    print(f"  {name:34s} {ratio['wall']['value']:.2f}x wall, "
          f"{ratio['cpu']['value']:.2f}x cpu" +
          (f"  (target >= {target}x)" if target else ""))
  loop = record["decode_loop"]
  print(f"  per decoded token: ours {loop['ours_step_ms']:.1f} ms, generate "
        f"{loop['hf_step_ms']:.1f} ms, floor {loop['floor_step_ms']:.1f} ms "
        f"({loop['bytes_per_step'] / 2**20:.0f} MiB read at "
        f"{loop['read_gb_per_s']:.1f} GB/s); encoder ours {loop['ours_encoder_s']:.3f} s, "
        f"HF {loop['hf_encoder_s']:.3f} s; best possible ratio with our encoder "
        f"{loop['ratio_if_loop_at_floor']:.2f}x")
  print(f"  greedy tokens agree with HF: "
        f"{record['checks']['greedy_tokens_agree_with_hf']:.1%}")
  print(f"  wrote {args.output} in {record['total_seconds']:.0f} s")
  return record


if __name__ == "__main__":
  main()
