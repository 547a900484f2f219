"""Shared pieces of the benchmarks: shapes, timing statistics, memory, the machine.

Every benchmark runs its contenders in separate worker processes (one framework or
one setting each, see `benchmarks/worker.py`) that stay alive together; the runner
asks them for one timed repetition in turn (A, B, A, B, …), so slow drifts of a
shared machine's load hit both sides alike and every ratio is one of medians
measured in the same minutes.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import resource
import statistics
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------
# Shapes.
# ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shapes:
  """What every benchmark measures at (issue 9: T5 1.1 small, B 8, 128 + 100 → 8).

  Attributes:
    preset: `prompt_tuning.models.config.preset` name of the frozen model.
    overrides: `T5Config` field overrides (the quick run shrinks the vocabulary).
    batch: B examples per step.
    inputs: T_in input tokens per example (the prompt comes on top).
    prompt: P prompt vectors (prompt tuning, the bank, prefix and LoPA lengths).
    targets: T_out target tokens per example.
    decode_length: tokens generated per example in the decoding benchmarks.
    bank_size: K prompts in the mixed-task bank.
    reps: timed repetitions per contender (median and spread are over these).
    steps: train steps per repetition; decoding runs one batch per repetition.
    matmul: n of the `[n, n] @ [n, n]` float32 matmul that measures the machine.
    matmul_seconds: work per matmul repetition (about a train step's: short bursts
      pair badly with steps on a loaded machine).
  """
  preset: str = "small"
  overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
  batch: int = 8
  inputs: int = 128
  prompt: int = 100
  targets: int = 8
  decode_length: int = 32
  bank_size: int = 8
  reps: int = 5
  steps: int = 2
  matmul: int = 2048
  matmul_seconds: float = 2.0

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Dict[str, Any]) -> "Shapes":
    return cls(**values)

  def model_config(self):
    from prompt_tuning.models.config import preset  # pylint: disable=g-import-not-at-top
    return preset(self.preset, **self.overrides)

  @property
  def tokens_per_step(self) -> int:
    """Tokens one train step consumes: B * (T_in + T_out) (the prompt excluded)."""
    return self.batch * (self.inputs + self.targets)


FULL = Shapes()
# Seconds on any machine: structure checks (tests/test_benchmarks.py), not numbers.
# One layer per stack and no dropout keep every compile short.
QUICK = Shapes(preset="tiny", overrides={"vocab_size": 512, "num_encoder_layers": 1,
                                         "num_decoder_layers": 1, "dropout_rate": 0.0},
               batch=2, inputs=12, prompt=4, targets=4, decode_length=4, bank_size=3,
               reps=2, steps=2, matmul=128, matmul_seconds=0.02)


# ------------------------------------------------------------------------------------
# Timing statistics.
# ------------------------------------------------------------------------------------


def summarize(samples: Sequence[float]) -> Dict[str, Any]:
  """median, min, max, relative spread ((max - min) / median) and the samples."""
  samples = [float(s) for s in samples]
  median = statistics.median(samples)
  return {"median": median, "min": min(samples), "max": max(samples),
          "spread": (max(samples) - min(samples)) / median if median else 0.0,
          "samples": samples}


def ratio(numerators: Sequence[float], denominators: Sequence[float]
          ) -> Dict[str, Any]:
  """Ratio of medians, with the spread of the per-repetition (paired) ratios.

  Repetitions are interleaved (A_i right after B_i), so pairing them cancels the
  load drift between pairs; `min`/`max` are the extreme paired ratios.
  """
  paired = [a / b for a, b in zip(numerators, denominators) if b]
  value = statistics.median(numerators) / statistics.median(denominators)
  return {"value": value, "min": min(paired), "max": max(paired),
          "paired_median": statistics.median(paired)}


# ------------------------------------------------------------------------------------
# Memory: peak resident set size of this process.
# ------------------------------------------------------------------------------------


def _status_kib(field: str) -> Optional[int]:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def rss_mib() -> float:
  """Current resident set size (MiB)."""
  kib = _status_kib("VmRSS")
  if kib is None:
    import psutil  # pylint: disable=g-import-not-at-top
    return psutil.Process().memory_info().rss / 2**20
  return kib / 1024


def peak_rss_mib() -> float:
  """Peak resident set size since start or the last `reset_peak_rss` (MiB).

  `VmHWM` of /proc (which `reset_peak_rss` can reset); `ru_maxrss` elsewhere.
  """
  kib = _status_kib("VmHWM")
  if kib is None:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return kib / 1024


def lifetime_peak_rss_mib() -> float:
  """`getrusage` peak RSS of the whole process life (never reset) (MiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
  """Resets `VmHWM` to the current RSS (Linux >= 4.0); False when not possible."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


# ------------------------------------------------------------------------------------
# The machine.
# ------------------------------------------------------------------------------------


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _cpu_flags() -> List[str]:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          flags = line.split(":", 1)[1].split()
          return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
  except OSError:
    pass
  return []


def load_average() -> List[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def _versions() -> Dict[str, str]:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers",
               "peft"):
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = "not installed"
  return out


def _git_commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def machine() -> Dict[str, Any]:
  """CPU model, cores, memory, OS, package versions, commit."""
  try:
    import psutil  # pylint: disable=g-import-not-at-top
    memory_gib = round(psutil.virtual_memory().total / 2**30, 1)
  except ImportError:
    memory_gib = None
  return {
      "cpu": _cpu_model(),
      "cpu_flags": _cpu_flags(),
      "logical_cores": os.cpu_count(),
      "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count(),
      "memory_gib": memory_gib,
      "os": platform.platform(),
      "versions": _versions(),
      "commit": _git_commit(),
  }


def command_line() -> str:
  """The exact command that produced the results (relative to the repo)."""
  script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
  return " ".join([os.path.basename(sys.executable), script] + sys.argv[1:])
