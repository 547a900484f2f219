r"""The paper's comparisons at tiny scale, with tuned baselines (issue 20).

  python scripts/replicate.py --profile full --output_dir results/replicate_tuned
  python scripts/replicate.py --profile full --output_dir results/replicate_tuned \
      --write_docs                      # then the tables into README / RESEARCH.md

One command, resumable: it pretrains the frozen models it lacks
(scripts/pretrain_tiny.py into the cache, prompt_tuning/tiny/sizes.py), then runs,
every run through `prompt_tuning.train` / `prompt_tuning.eval` (research/sweep.py
runs, reused when finished, so an interrupted replication continues):

  (a) baselines   every method of configs/methods/ on the bundled 1.3M model: a
                  learning-rate grid (4 values a factor 3 apart around the method's
                  paper default), widened on the side of its best until the best is
                  interior (a grid flat at one score: upwards); the step budget
                  doubled (up to the profile's maximum) until the best rate's
                  validation curve has flattened; then the seeds at that rate and
                  budget. Curves are recorded.
  (b) budget      prompt length, LoPA rank and width, prefix length and MLP width,
                  LoRA rank chosen so trained parameters are closest to one target
                  (counted from shapes, as scripts/count_method_params.py does).
  (c) objectives  prompt tuning on the span-corruption-only model, the same model
                  with a sentinel before every target, and the LM-adapted model
                  (Lester et al. 2021, section 3.2, Figure 3(d)).
  (d) scaling     prompt tuning, model tuning (each at its best rate and budget from
                  (a)) and prompt design at every size (Figure 1).

The task is the taskless `count` of tasks/tiny_shift.py (as scripts/replicate_tiny.py):
"the happy man wants the cheese ." -> "seven". Scores are validation accuracy, the
best evaluation of a run (as in replicate_tiny), mean ± std over seeds.

Writes to --output_dir: summary.json (every number of the tables: method, setting,
learning-rate grid and scores, best rate, steps, curve, mean, std, seeds, wall
time), results.md, figures/*.png, runs/ (every MODEL_DIR), logs/ (pretraining),
timing.jsonl (wall time of every run). --write_docs replaces the text between
`<!-- replicate:begin -->` and `<!-- replicate:end -->` in README.md and
docs/RESEARCH.md with the tables.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
from prompt_tuning import errors  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import collect, plots  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import replication as rep  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import runs as runs_lib  # pylint: disable=g-import-not-at-top
from prompt_tuning.research import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
from prompt_tuning.run_dir import layout, train_state  # pylint: disable=g-import-not-at-top
from prompt_tuning.tiny import assets, corpus, sizes  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
TASK = "taskless_tiny_shift_count_source"
DESIGN_TASK = "tiny_shift_count_source"
SENTINEL_TASK = TASK + "_1_sentinel"
CLASS_LABELS = list(corpus.NUMBER_WORDS[5:13])  # five … twelve
COMMON_GIN = "demo/tiny_common.gin"
MODEL_GIN = "models/tiny_bundled.gin"
LENGTH, INIT = 10, "class_labels"
BEGIN, END = "<!-- replicate:begin -->", "<!-- replicate:end -->"
DOCS = ("README.md", "docs/RESEARCH.md")

# The optimizer binding each method's learning rate lives in, and its paper default
# (configs/methods/<method>.gin), the second value of the first grid.
LR_KEYS = {
    "prompt_tuning": ("optim.adafactor_prompt_tuning.learning_rate", 0.3),
    "model_tuning": ("optim.adafactor_model_tuning.learning_rate", 1e-3),
    "prefix_tuning": ("optim.adamw_prefix_tuning.learning_rate", 5e-5),
    "p_tuning_v2": ("optim.adamw_p_tuning_v2.learning_rate", 5e-3),
    "per_layer_prompt": ("optim.adafactor_prompt_tuning.learning_rate", 0.3),
    "lopa": ("optim.adamw_lopa.learning_rate", 1e-3),
    "lora": ("optim.adamw_lora.learning_rate", 5e-4),
    "ia3": ("optim.adafactor_ia3.learning_rate", 3e-3),
    "bitfit": ("optim.adamw_bitfit.learning_rate", 1e-3),
}
LABELS = {"prompt_tuning": "prompt tuning", "model_tuning": "model tuning",
          "prefix_tuning": "prefix tuning", "p_tuning_v2": "P-tuning v2",
          "per_layer_prompt": "per-layer prompts", "lopa": "LoPA", "lora": "LoRA",
          "ia3": "IA3", "bitfit": "BitFit-style", "prompt_design": "prompt design"}
OBJECTIVE_LABELS = {"span_only": "span corruption",
                    "span_sentinel": "span corruption + sentinel",
                    "lm_adapted": "LM adaptation"}


@dataclasses.dataclass(frozen=True)
class Profile:
  """How much of everything one replication does."""
  methods: Tuple[str, ...]
  grid_size: int          # learning rates in the first grid
  max_widenings: int      # rates added at an edge before giving up
  steps: int              # first step budget (grid runs)
  max_steps: int          # the budget doubles up to this until the curve is flat
  eval_period: int
  seeds: int
  sizes: Tuple[str, ...]  # the scaling curve
  pretrain_args: Tuple[str, ...]  # scripts/pretrain_tiny.py flags (steps, batch)
  budget_target: int      # trained parameters of the budget-matched comparison
  batch_size: int = 32
  max_eval_examples: int = 500
  flat_tolerance: float = 1.0   # accuracy points (replication.flattened)
  factor: float = 3.0


PROFILES = {
    "full": Profile(methods=tuple(LR_KEYS), grid_size=4, max_widenings=4, steps=600,
                    max_steps=38400, eval_period=100, seeds=3,
                    sizes=("0.03m", "0.1m", "0.3m", "1.3m", "5m"),  # + 20m: --sizes
                    pretrain_args=("--span_steps", "1500", "--lm_steps", "1500"),
                    budget_target=6144),
    # Seconds per run: the whole pipeline on 2-value grids, a few steps.
    "smoke": Profile(methods=("prompt_tuning", "model_tuning", "prefix_tuning",
                              "lopa", "lora"), grid_size=2, max_widenings=1, steps=2,
                     max_steps=4, eval_period=1, seeds=2, sizes=("0.3m", "1.3m"),
                     pretrain_args=("--span_steps", "2", "--lm_steps", "2",
                                    "--batch_size", "4", "--warmup_steps", "1",
                                    "--log_every", "2"),
                     budget_target=6144, batch_size=4, max_eval_examples=8),
}
BUDGET_METHODS = ("prompt_tuning", "lopa", "prefix_tuning", "lora")


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.script_parser("scripts/replicate.py", __doc__)
  p.add_argument("--profile", default="full", choices=sorted(PROFILES))
  p.add_argument("--output_dir", default="results/replicate_tuned")
  p.add_argument("--cache_dir", default=None,
                 help="pretrained models (default: prompt_tuning/tiny/sizes.py's "
                 "cache for full; <output_dir>/pretrained for smoke)")
  p.add_argument("--methods", default=None,
                 help="comma-separated subset of the profile's methods")
  p.add_argument("--sizes", default=None, help="comma-separated subset of sizes")
  p.add_argument("--seeds", type=int, default=None,
                 help="seeds per setting (default: the profile's)")
  p.add_argument("--experiments", default="baselines,budget,objectives,scaling")
  p.add_argument("--tabulate_only", action="store_true",
                 help="train and pretrain nothing: tabulate the finished runs and "
                 "list what is missing (a row needing an unfinished run is left out)")
  p.add_argument("--write_docs", action="store_true",
                 help="also replace the tables between the markers in --docs")
  p.add_argument("--docs", default=",".join(DOCS))
  return p.parse_args(argv)


# ------------------------------------------------------------------------------------
# Context: the profile, the places, the bookkeeping.
# ------------------------------------------------------------------------------------


class Missing(Exception):
  """--tabulate_only met a run or pretraining that has not finished."""


@dataclasses.dataclass
class Context:
  profile: Profile
  out: pathlib.Path
  cache: pathlib.Path
  failed: List[str] = dataclasses.field(default_factory=list)
  tabulate_only: bool = False
  missing: List[str] = dataclasses.field(default_factory=list)

  def _timed(self) -> List[Dict[str, Any]]:
    """timing.jsonl's entries: {"name", "seconds", "load"} per timed step."""
    path = self.out / "timing.jsonl"
    return ([json.loads(line) for line in path.read_text().splitlines()]
            if path.exists() else [])

  def timing(self) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for entry in self._timed():
      out[entry["name"]] = out.get(entry["name"], 0.0) + entry["seconds"]
    return out

  def mean_load(self) -> Optional[float]:
    """The 1-minute load average at the end of each timed step, weighted by its time."""
    entries = self._timed()
    total = sum(e["seconds"] for e in entries if "load" in e)
    if not total:
      return None
    return sum(e["seconds"] * e["load"] for e in entries if "load" in e) / total

  def record(self, name: str, seconds: float) -> None:
    with open(self.out / "timing.jsonl", "a") as f:
      f.write(json.dumps({"name": name, "seconds": round(seconds, 1),
                          "load": os.getloadavg()[0]}) + "\n")


@contextlib.contextmanager
def missing_noted(ctx: Context):
  """Under --tabulate_only: an unfinished run leaves out the row built in the block
  (nothing else) and is listed in summary["missing"]."""
  try:
    yield
  except Missing as e:
    ctx.missing.append(str(e))


def model_name(size: str, objective: str) -> str:
  return f"{size}_{objective}"


def pretrained(ctx: Context, size: str, objective: str) -> pathlib.Path:
  """The checkpoint directory of (size, objective); pretrains it when missing."""
  if sizes.is_bundled(size, objective):
    return assets.CHECKPOINT_PATH
  kind = sizes.PRETRAINED_AS[objective]
  directory = sizes.model_dir(size, kind, 0, ctx.cache)
  manifest_path = directory / assets.MANIFEST_FILE
  extra = list(ctx.profile.pretrain_args)
  if kind != "lm_adapted" and "--lm_steps" in extra:  # no LM stage to size
    i = extra.index("--lm_steps")
    del extra[i:i + 2]
  flags = ["--size", size, "--objective", kind, "--output_dir", str(directory),
           "--vocab_file", str(assets.VOCAB_PATH)] + extra
  if not manifest_path.exists() and ctx.tabulate_only:
    raise Missing(f"pretraining {size} {kind}")
  if not manifest_path.exists():
    log = ctx.out / "logs" / f"pretrain_{size}_{kind}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "scripts" / "pretrain_tiny.py")] + flags
    print(f"pretraining {size} {kind}: {' '.join(cmd)} (log {log})", flush=True)
    start = time.time()
    # The child imports this checkout's package, as this process does.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    with open(log, "ab") as f:
      status = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=str(REPO),
                               env=env)
    ctx.record(f"pretrain/{size}_{kind}", time.time() - start)
    if status:
      raise RuntimeError(f"Pretraining {size} {kind} failed (exit {status}); see "
                         f"{log}. Rerun this command to resume it.")
  manifest = json.loads(manifest_path.read_text())
  wanted = _pretrain_steps(ctx.profile, kind)
  if manifest["steps"]["total"] != wanted:
    raise errors.UserError(
        f"{directory} was pretrained for {manifest['steps']['total']} steps, this "
        f"profile wants {wanted}; pass another --cache_dir or delete it.")
  return directory / assets.CHECKPOINT_DIR


def _pretrain_steps(profile: Profile, kind: str) -> int:
  args = list(profile.pretrain_args)
  span = int(args[args.index("--span_steps") + 1]) if "--span_steps" in args else 1500
  lm = int(args[args.index("--lm_steps") + 1]) if "--lm_steps" in args else 1500
  return span + (lm if kind == "lm_adapted" else 0)


def model_spec(ctx: Context, size: str, objective: str) -> Dict[str, Any]:
  checkpoint = pretrained(ctx, size, objective)
  if sizes.is_bundled(size, objective):
    return {"gin_files": [MODEL_GIN]}
  return {"gin_files": [MODEL_GIN], "bindings": sizes.gin_bindings(size, checkpoint)}


def make_sweep(ctx: Context, size: str, objective: str, grids: List[Dict[str, Any]]):
  p = ctx.profile
  task = SENTINEL_TASK if objective == "span_sentinel" else TASK
  config = {
      "output_dir": str(ctx.out), "task": task, "metric": "accuracy",
      "design_task": DESIGN_TASK, "gin_files": [COMMON_GIN],
      "bindings": {"EVAL_PERIOD": p.eval_period, "CHECKPOINT_PERIOD": p.eval_period,
                   "BATCH_SIZE": p.batch_size,
                   "MAX_EVAL_EXAMPLES": p.max_eval_examples,
                   "EVAL_BATCH_SIZE": min(100, p.max_eval_examples),
                   "TrainConfig.eval_batch_size": min(100, p.max_eval_examples),
                   "TrainConfig.log_period": max(1, min(100, p.eval_period)),
                   "CLASS_LABELS": CLASS_LABELS},
      "models": {model_name(size, objective): model_spec(ctx, size, objective)},
      "grids": grids,
  }
  return sweep_lib.expand(config)


def method_grid(method: str, seeds: Sequence[int], steps: int,
                lrs: Optional[Sequence[float]] = None,
                extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  spec = sweep_lib.METHODS[method]
  grid: Dict[str, Any] = {"method": [method], "seed": list(seeds)}
  if method == "prompt_design":
    return grid
  if spec.uses_length:
    grid["prompt_length"] = [LENGTH]
  if spec.uses_init:
    grid["init"] = [INIT]
  grid["TRAIN_STEPS"] = [steps]
  if lrs is not None:
    grid[LR_KEYS[method][0]] = list(lrs)
  for key, value in (extra or {}).items():
    grid[key] = [value]
  return grid


def shorter_twin(sweep, run) -> Optional[pathlib.Path]:
  """The finished run with the most steps below `run`'s TRAIN_STEPS that is
  otherwise `run` (a budget doubling's previous run, or the same seed at the old
  cap), for a run not started yet. The learning rates here never depend on the
  run's length (no `total_steps` is bound), so `run` continues it rather than
  training its first steps again (`train_state.continue_finished`)."""
  extra = dict(run.extra)
  steps = extra.get("TRAIN_STEPS")
  if steps is None or sweep.status(run) != "missing":
    return None
  fewer = steps // 2
  while fewer >= 1:
    name = sweep_lib.run_name(run.model, run.method, run.prompt_length, run.init,
                              run.seed, tuple((k, fewer if k == "TRAIN_STEPS" else v)
                                              for k, v in run.extra))
    twin = sweep.output_dir / "runs" / name
    if layout.is_complete(twin, fewer):
      return twin
    fewer //= 2
  return None


def run_all(ctx: Context, sweep) -> List[Dict[str, Any]]:
  """Runs what is not finished; one result dict per run (curve, best, seconds)."""
  for run in sweep.runs:
    if sweep.status(run) == "done" or run.name in ctx.failed:
      continue
    if ctx.tabulate_only:
      raise Missing(run.name)
    shorter = shorter_twin(sweep, run)
    print(f"run {run.name}" + (f" (continuing {shorter.parent.name})"
                               if shorter else "") + f"\n  {run.run.command()}",
          flush=True)
    start = time.time()
    if shorter:
      try:
        train_state.continue_finished(str(shorter), str(run.model_dir))
      except ValueError as e:  # e.g. a schedule bound to its length
        print(f"  not continuing: {e}", flush=True)
    try:
      run.run.run_in_process()
    except errors.Preempted:  # SIGTERM: the run saved its checkpoint; stop here
      raise
    except Exception as e:  # pylint: disable=broad-except
      print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
      ctx.failed.append(run.name)
    finally:
      ctx.record(run.name, time.time() - start)
  timing = ctx.timing()
  out = []
  for run in sweep.runs:
    evaluations = layout.evaluations(run.model_dir, sweep.task_of(run))
    curve = sorted((int(e["step"]), float(e["accuracy"])) for e in evaluations
                   if "accuracy" in e)
    out.append({"name": run.name, "method": run.method, "seed": run.seed,
                "extra": dict(run.extra), "curve": curve,
                "best": max((v for _, v in curve), default=None),
                "final": curve[-1][1] if curve else None,
                "seconds": timing.get(run.name),
                "failed": run.name in ctx.failed})
  return out


def _score(result: Dict[str, Any]) -> float:
  """A failed or diverged run scores 0 (it is the worst rate, not a missing one)."""
  return result["best"] if result["best"] is not None else 0.0


def seeds_summary(results: List[Dict[str, Any]]) -> Dict[str, Any]:
  values = [r["best"] for r in results if r["best"] is not None]
  mean, std = collect.mean_std(values) if values else (None, None)
  return {"seeds": [r["seed"] for r in results], "values": values, "mean": mean,
          "std": std, "finals": [r["final"] for r in results],
          "seconds": round(sum(r["seconds"] or 0.0 for r in results), 1),
          "runs": [r["name"] for r in results]}


# ------------------------------------------------------------------------------------
# (a) Baselines.
# ------------------------------------------------------------------------------------


def baseline(ctx: Context, method: str) -> Dict[str, Any]:
  p = ctx.profile
  size, objective = sizes.BUNDLED_SIZE, sizes.BUNDLED_OBJECTIVE
  key, center = LR_KEYS[method]

  def score(grid):
    results = run_all(ctx, make_sweep(ctx, size, objective,
                                      [method_grid(method, [0], p.steps, grid)]))
    return {r["extra"][key]: _score(r) for r in results}

  search = rep.search_lr(rep.lr_grid(center, p.grid_size, p.factor), score, p.factor,
                         p.max_widenings)
  best_lr, steps = search["best_lr"], p.steps
  budget_curves = {}
  while True:
    (first,) = run_all(ctx, make_sweep(ctx, size, objective,
                                       [method_grid(method, [0], steps, [best_lr])]))
    budget_curves[steps] = first["curve"]
    flat = rep.flattened(first["curve"], p.flat_tolerance)
    if flat or steps * 2 > p.max_steps:
      break
    steps *= 2
  results = run_all(ctx, make_sweep(ctx, size, objective, [method_grid(
      method, range(p.seeds), steps, [best_lr])]))
  grid_seconds = sum(ctx.timing().get(r["name"], 0.0) for r in run_all(
      ctx, make_sweep(ctx, size, objective, [method_grid(method, [0], p.steps,
                                                         search["grid"])])))
  return {"method": method, "setting": _setting(method), "lr_key": key,
          "lr_grid": search["grid"],
          "lr_scores": {str(k): v for k, v in search["scores"].items()},
          "best_lr": best_lr, "lr_interior": search["interior"],
          "widenings": search["widenings"], "grid_steps": p.steps, "steps": steps,
          "flattened": flat, "curves": {str(k): v for k, v in budget_curves.items()},
          "grid_seconds": round(grid_seconds, 1), **seeds_summary(results)}


def _setting(method: str) -> str:
  spec = sweep_lib.METHODS[method]
  parts = []
  if spec.uses_length:
    parts.append(f"length {LENGTH}")
  if spec.uses_init:
    parts.append("class-label init")
  return ", ".join(parts) or "defaults of its gin"


def prompt_design(ctx: Context, size: str, objective: str) -> Dict[str, Any]:
  (result,) = run_all(ctx, make_sweep(ctx, size, objective,
                                      [method_grid("prompt_design", [0], 0)]))
  return {"size": size, "objective": objective, "value": result["best"],
          "seconds": result["seconds"]}


# ------------------------------------------------------------------------------------
# (b) Budget-matched comparison.
# ------------------------------------------------------------------------------------


def budget_candidates() -> Dict[str, Dict[Tuple, Tuple[Any, Dict[str, Any]]]]:
  """{method: {setting: (Method, extra gin bindings)}} to choose from."""
  from prompt_tuning.methods import lopa, lora, prefix, prompt  # pylint: disable=g-import-not-at-top
  out: Dict[str, Dict[Tuple, Tuple[Any, Dict[str, Any]]]] = {
      "prompt_tuning": {}, "lopa": {}, "prefix_tuning": {}, "lora": {}}
  for length in (1, 2, 5, 10, 20, 24, 48, 50, 100):
    out["prompt_tuning"][("length", length)] = (
        prompt.prompt_tuning(length=length), {"PROMPT_LENGTH": length})
  for rank in (1, 2, 4, 8):
    for hidden in (4, 8, 16, 32, 64, 128, 256):
      out["lopa"][("rank", rank, "width", hidden)] = (
          lopa.lopa(length=LENGTH, rank=rank, hidden_dim=hidden),
          {"LOPA_RANK": rank, "methods.lopa.hidden_dim": hidden})
  for length in (1, 2, 5, 10, 20):
    for hidden in (2, 4, 8, 16, 32, 64, 128, 512):
      out["prefix_tuning"][("length", length, "width", hidden)] = (
          prefix.prefix_tuning(length=length, hidden_dim=hidden),
          {"PROMPT_LENGTH": length, "methods.prefix_tuning.hidden_dim": hidden})
  for rank in (1, 2, 4, 8, 16):
    out["lora"][("rank", rank)] = (lora.lora(rank=rank), {"LORA_RANK": rank})
  return out


def budget(ctx: Context, baselines: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  config = checkpoints.open_checkpoint(assets.CHECKPOINT_PATH).config
  rows = []
  for method, candidates in budget_candidates().items():
    if method not in baselines:
      continue
    counts = {k: rep.trained_parameters(m, config) for k, (m, _) in candidates.items()}
    choice = rep.closest(counts, ctx.profile.budget_target)
    bindings = dict(candidates[choice][1])
    base = baselines[method]
    if method == "prompt_tuning" or method == "prefix_tuning":
      length = bindings.pop("PROMPT_LENGTH")
      grid = method_grid(method, range(ctx.profile.seeds), base["steps"],
                         [base["best_lr"]], bindings)
      grid["prompt_length"] = [length]
    else:
      grid = method_grid(method, range(ctx.profile.seeds), base["steps"],
                         [base["best_lr"]], bindings)
    with missing_noted(ctx):
      results = run_all(ctx, make_sweep(ctx, sizes.BUNDLED_SIZE,
                                        sizes.BUNDLED_OBJECTIVE, [grid]))
      actual = trained_parameters(ctx, results[0]["name"])
      if actual is not None and actual != counts[choice]:  # shapes vs the run's state
        print(f"WARNING: {method} {choice}: counted {counts[choice]} trained "
              f"parameters from shapes, the run trained {actual}.", flush=True)
      rows.append({"method": method, "setting": " ".join(str(x) for x in choice),
                   "trained_parameters": counts[choice],
                   "trained_parameters_in_run": actual,
                   "target": ctx.profile.budget_target, "lr": base["best_lr"],
                   "steps": base["steps"], **seeds_summary(results)})
  return rows


# ------------------------------------------------------------------------------------
# (c) Pretraining objectives, (d) scaling.
# ------------------------------------------------------------------------------------


def objectives(ctx: Context, base: Dict[str, Any]) -> List[Dict[str, Any]]:
  rows = []
  for objective in sizes.OBJECTIVES:
    with missing_noted(ctx):
      results = run_all(ctx, make_sweep(ctx, sizes.BUNDLED_SIZE, objective, [
          method_grid("prompt_tuning", range(ctx.profile.seeds), base["steps"],
                      [base["best_lr"]])]))
      rows.append({"objective": objective, "label": OBJECTIVE_LABELS[objective],
                   "task": SENTINEL_TASK if objective == "span_sentinel" else TASK,
                   "lr": base["best_lr"], "steps": base["steps"],
                   **seeds_summary(results)})
  return rows


def scaling(ctx: Context, baselines: Dict[str, Dict[str, Any]],
            size_names: Sequence[str]) -> List[Dict[str, Any]]:
  rows = []
  for size in size_names:
    objective, parameters = sizes.BUNDLED_OBJECTIVE, None
    with missing_noted(ctx):
      parameters = collect.count_parameters(_config(ctx, size))
    if parameters is None:
      continue
    for method in ("prompt_tuning", "model_tuning"):
      if method not in baselines:
        continue
      base = baselines[method]
      with missing_noted(ctx):
        results = run_all(ctx, make_sweep(ctx, size, objective, [method_grid(
            method, range(ctx.profile.seeds), base["steps"], [base["best_lr"]])]))
        rows.append({"size": size, "parameters": parameters, "method": method,
                     "lr": base["best_lr"], "steps": base["steps"],
                     **seeds_summary(results)})
    with missing_noted(ctx):
      design = prompt_design(ctx, size, objective)
      rows.append({"size": size, "parameters": parameters, "method": "prompt_design",
                   "seeds": [0], "values": [design["value"]], "mean": design["value"],
                   "std": 0.0, "seconds": design["seconds"]})
  return rows


def _config(ctx: Context, size: str):
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  return checkpoints.open_checkpoint(pretrained(ctx, size, "lm_adapted")).config


# ------------------------------------------------------------------------------------
# Tables, figures, docs.
# ------------------------------------------------------------------------------------


def _ms(row) -> str:
  if row.get("mean") is None:
    return "—"
  return f"{row['mean']:.1f} ± {row['std']:.1f}"


def _lr(x: float) -> str:
  return f"{x:g}"


def markdown(summary: Dict[str, Any]) -> str:
  sections = []
  p = summary["profile"]
  if summary.get("baselines"):
    lines = ["| method | learning-rate grid (seed 0 score) | best lr | interior | "
             "steps (flat) | accuracy, mean ± std | seeds | trained parameters |",
             "|---|---|---|---|---|---|---|---|"]
    for b in summary["baselines"]:
      grid = ", ".join(f"{_lr(float(k))}: {v:.1f}" for k, v in b["lr_scores"].items())
      lines.append(f"| {LABELS.get(b['method'], b['method'])} | {grid} | "
                   f"{_lr(b['best_lr'])} | {'yes' if b['lr_interior'] else '**no**'} | "
                   f"{b['steps']} ({'yes' if b['flattened'] else 'no'}) | "
                   f"{_ms(b)} | {len(b['values'])} | "
                   f"{b.get('trained_parameters', '')} |")
    sections.append("### Tuned baselines (1.3M LM-adapted model)\n\n" +
                    "\n".join(lines))
  if summary.get("budget"):
    lines = ["| method | setting | trained parameters | lr | steps | accuracy |",
             "|---|---|---|---|---|---|"]
    for b in summary["budget"]:
      lines.append(f"| {LABELS.get(b['method'], b['method'])} | {b['setting']} | "
                   f"{b['trained_parameters']:,} | {_lr(b['lr'])} | {b['steps']} | "
                   f"{_ms(b)} |")
    sections.append(f"### Budget-matched (target {p['budget_target']:,} trained "
                    "parameters)\n\n" + "\n".join(lines))
  if summary.get("objectives"):
    lines = ["| pretraining objective | task | accuracy (prompt tuning) |",
             "|---|---|---|"]
    for o in summary["objectives"]:
      lines.append(f"| {o['label']} | `{o['task']}` | {_ms(o)} |")
    sections.append("### Pretraining objective (1.3M, prompt tuning)\n\n" +
                    "\n".join(lines))
  if summary.get("scaling"):
    size_names = list(dict.fromkeys(r["size"] for r in summary["scaling"]))
    methods = list(dict.fromkeys(r["method"] for r in summary["scaling"]))
    by = {(r["size"], r["method"]): r for r in summary["scaling"]}
    params = {r["size"]: r["parameters"] for r in summary["scaling"]}
    lines = ["| method | " + " | ".join(f"{s} ({params[s]:,})" for s in size_names)
             + " |", "|---|" + "---|" * len(size_names)]
    for m in methods:
      lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(
          _ms(by[(s, m)]) if (s, m) in by else "" for s in size_names) + " |")
    sections.append("### Scaling (LM-adapted models, frozen parameters)\n\n" +
                    "\n".join(lines))
  if summary.get("missing"):
    sections.append(f"**Not finished** ({len(summary['missing'])}; rerun the command "
                    "without --tabulate_only to train them, their rows are left out "
                    "above): " + ", ".join(f"`{m}`" for m in summary["missing"]))
  w = summary["wall"]
  load = (f" (1-minute load average {w['mean_load']:.1f} on {w['cpus']} cores, "
          "weighted by time)" if w.get("mean_load") is not None else "")
  sections.append(f"Profile `{summary['profile_name']}`; compute time "
                  f"{w['seconds'] / 3600:.2f} h: the sum of the wall times of every run "
                  f"and pretraining ({w['runs']} timed steps), what the command takes "
                  f"in one process at the load it ran under{load}. Several processes "
                  "on disjoint --methods/--sizes finish sooner.")
  return "\n\n".join(sections)


def figures(summary: Dict[str, Any], directory: pathlib.Path) -> List[str]:
  made = []
  if summary.get("baselines"):
    import math  # pylint: disable=g-import-not-at-top
    grids = {LABELS.get(b["method"], b["method"]): [
        (math.log10(float(k)), v) for k, v in b["lr_scores"].items()]
             for b in summary["baselines"]}
    made.append(plots.curves_plot(grids, str(directory / "lr_grids.png"),
                                  xlabel="log10 learning rate",
                                  ylabel="accuracy (%), seed 0",
                                  title="Learning-rate grids"))
    curves = {LABELS.get(b["method"], b["method"]): b["curves"][str(b["steps"])]
              for b in summary["baselines"] if b["curves"].get(str(b["steps"]))}
    if curves:
      made.append(plots.curves_plot(curves, str(directory / "curves.png"),
                                    ylabel="accuracy (%)",
                                    title="Validation curves at the best rate"))
  if summary.get("scaling"):
    rows = [{"method": r["method"], "parameters": r["parameters"], "best": v}
            for r in summary["scaling"] for v in r["values"]]
    made.append(plots.scaling_plot(rows, str(directory / "scaling.png"),
                                   ylabel="accuracy (%)", title="Tiny T5 scaling"))
  if summary.get("objectives"):
    rows = [{"method": o["label"], "best": v} for o in summary["objectives"]
            for v in o["values"]]
    if rows:
      made.append(plots.methods_plot(rows, str(directory / "objectives.png"),
                                     ylabel="accuracy (%)",
                                     title="Pretraining objective"))
  return [str(m) for m in made]


def figure_links(figure_paths: Sequence[str], doc: pathlib.Path) -> str:
  """Markdown images of the figures, each path relative to `doc`'s folder."""
  return "\n".join(
      f"![{pathlib.Path(f).stem}]"
      f"({os.path.relpath(pathlib.Path(f).resolve(), doc.resolve().parent)})"
      for f in figure_paths)


def write_docs(text: str, paths: Sequence[str],
               figure_paths: Sequence[str] = ()) -> List[str]:
  """Replaces the text between the markers of each file with `text` and the
  figures (linked relative to that file); errors name a file without markers."""
  written = []
  for path in paths:
    path = pathlib.Path(path)
    content = path.read_text()
    if BEGIN not in content or END not in content:
      raise errors.UserError(f"{path} has no {BEGIN} … {END} markers; add them where "
                             "the replication tables belong.")
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = text.strip()
    if figure_paths:
      body += "\n\n" + figure_links(figure_paths, path)
    path.write_text(head + BEGIN + "\n" + body + "\n" + END + tail)
    written.append(str(path))
  return written


# Profile fields that only choose which runs exist (their names say the rest): a
# larger max_steps adds longer runs for curves not flat at the old cap, and reuses
# every run made before.
SUBSET_FIELDS = ("methods", "sizes", "seeds", "max_steps")


def check_profile(out: pathlib.Path, name: str, profile: Profile) -> None:
  """One output directory holds one profile: run names carry the method, size, rate,
  steps and seed, not the evaluation period, batch or pretraining steps. Subsets of
  methods, sizes and seeds (--methods, --sizes, --seeds) and the step cap may differ
  between invocations."""
  path = out / "profile.json"
  value = {"name": name, **dataclasses.asdict(profile)}
  value = json.loads(json.dumps(value))
  if path.exists():
    old = json.loads(path.read_text())
    if ({k: v for k, v in old.items() if k not in SUBSET_FIELDS} !=
        {k: v for k, v in value.items() if k not in SUBSET_FIELDS}):
      raise errors.UserError(f"{out} holds a replication with another profile "
                             f"({old['name']}); use another --output_dir.")
  else:
    path.write_text(json.dumps(value, indent=2) + "\n")


def main(argv=None) -> Dict[str, Any]:
  args = parse_args(argv)
  profile = PROFILES[args.profile]
  if args.methods:
    chosen = [m for m in args.methods.split(",") if m]
    unknown = set(chosen) - set(LR_KEYS)
    if unknown:
      raise SystemExit(f"--methods: unknown {sorted(unknown)}; choose from "
                       f"{sorted(LR_KEYS)}.")
    profile = dataclasses.replace(profile, methods=tuple(chosen))
  if args.sizes:
    profile = dataclasses.replace(profile, sizes=tuple(
        s for s in args.sizes.split(",") if s))
    for s in profile.sizes:
      sizes.check(s, "lm_adapted")
  if args.seeds is not None:
    profile = dataclasses.replace(profile, seeds=args.seeds)
  experiments = [e for e in args.experiments.split(",") if e]
  out = pathlib.Path(args.output_dir)
  out.mkdir(parents=True, exist_ok=True)
  cache = pathlib.Path(args.cache_dir) if args.cache_dir else (
      sizes.cache_root() if args.profile == "full" else out / "pretrained")
  check_profile(out, args.profile, profile)
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", str((out / "xla_cache").absolute()))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  runs_lib.quiet_console()
  ctx = Context(profile, out, cache, tabulate_only=args.tabulate_only)
  start = time.time()
  summary: Dict[str, Any] = {"profile_name": args.profile,
                             "profile": dataclasses.asdict(profile), "task": TASK,
                             "metric": "accuracy (validation, best evaluation)"}
  baselines: Dict[str, Dict[str, Any]] = {}
  needed = set(profile.methods) if "baselines" in experiments else set()
  needed |= {"prompt_tuning"} & set(profile.methods)
  needed |= {"model_tuning"} & set(profile.methods) if "scaling" in experiments else set()
  needed |= set(BUDGET_METHODS) & set(profile.methods) if "budget" in experiments else set()
  for method in [m for m in LR_KEYS if m in needed]:
    with missing_noted(ctx):
      baselines[method] = baseline(ctx, method)
      baselines[method]["trained_parameters"] = trained_parameters(
          ctx, baselines[method]["runs"][0])
  summary["baselines"] = list(baselines.values())
  with missing_noted(ctx):
    summary["prompt_design"] = prompt_design(ctx, sizes.BUNDLED_SIZE,
                                             sizes.BUNDLED_OBJECTIVE)
  if "budget" in experiments:
    summary["budget"] = budget(ctx, baselines)
  if "objectives" in experiments and "prompt_tuning" in baselines:
    summary["objectives"] = objectives(ctx, baselines["prompt_tuning"])
  if "scaling" in experiments:
    summary["scaling"] = scaling(ctx, baselines, profile.sizes)
  timing = ctx.timing()
  summary["wall"] = {"seconds": round(sum(timing.values()), 1), "runs": len(timing),
                     "this_invocation_seconds": round(time.time() - start, 1),
                     "mean_load": ctx.mean_load(),
                     "cpus": os.cpu_count(), "platform": platform.platform(),
                     "load_average": os.getloadavg()}
  summary["failed"] = ctx.failed
  summary["missing"] = ctx.missing
  summary["figures"] = figures(summary, out / "figures")
  text = markdown(summary)
  (out / "results.md").write_text(text + "\n")
  (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
  if args.write_docs:
    summary["docs"] = write_docs(text, [d for d in args.docs.split(",") if d],
                                 summary["figures"])
  print(text, flush=True)
  print(f"\nWrote {out}/summary.json, results.md, figures/.", flush=True)
  return summary


def trained_parameters(ctx: Context, run_name: str) -> Optional[int]:
  """Trained parameters of a finished run, read from its orbax state."""
  from prompt_tuning.run_dir import train_state  # pylint: disable=g-import-not-at-top
  try:
    arrays = train_state.read_trainable(ctx.out / "runs" / run_name)
  except Exception:  # pylint: disable=broad-except
    return None
  return int(sum(a.size for a in arrays.values()))


if __name__ == "__main__":
  import signal  # pylint: disable=g-import-not-at-top
  # A background shell starts jobs with SIGINT ignored; `kill -INT` should stop us.
  signal.signal(signal.SIGINT, signal.default_int_handler)
  errors.run_reporting("scripts/replicate.py", main, sys.argv[1:])
