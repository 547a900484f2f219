"""A grid of runs (model sizes x methods x prompt lengths x inits x seeds), one file.

A sweep file (YAML or JSON):

  output_dir: results/sweeps/tiny          # runs go to <output_dir>/runs/<name>/
  task: taskless_tiny_topic                # MIXTURE_OR_TASK_NAME of every run
  metric: accuracy                         # collected (best over evaluations)
  design_task: tiny_topic                  # prompt_design runs evaluate this task
  gin_files: [demo/tiny_common.gin]        # after the model/run/method/init gins
  bindings: {TRAIN_STEPS: 300, EVAL_PERIOD: 100}
  models:                                  # name -> gin files (or a mapping with
    tiny: [models/tiny_bundled.gin]        #   gin_files, bindings, parameters)
  methods:                                 # optional per-method extras
    prefix_tuning: {bindings: {optim.adamw_prefix_tuning.learning_rate: 1e-3}}
  grid:                                    # or `grids: [{...}, {...}]` (a union)
    model: [tiny]
    method: [prompt_tuning, model_tuning]
    prompt_length: [1, 5, 20, 100]
    init: [class_labels, sampled_vocab]
    seed: [0, 1, 2]
    optim.adafactor_prompt_tuning.learning_rate: [0.3]   # any other key: a gin
                                                         # binding swept as an axis

Axes a method does not use collapse (model tuning ignores prompt_length and init), so
the grid holds each distinct run once. Each run is one `prompt_tuning.train` call
(`prompt_tuning.eval` for `prompt_design`), see `SweepRun.run`.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from prompt_tuning.errors import UserError
from prompt_tuning.run_dir import layout
from prompt_tuning.research.runs import GinRun, binding


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """How a method name of a sweep becomes gin files."""
  entry: str
  gin_files: Tuple[str, ...]
  uses_length: bool
  uses_init: bool


METHODS: Dict[str, MethodSpec] = {
    # One method gin (METHOD, OPTIMIZER, PROMPT_LENGTH) + one run gin each.
    "prompt_tuning": MethodSpec("train", ("methods/prompt_tuning.gin",
                                          "runs/prompt_finetune.gin"), True, True),
    "model_tuning": MethodSpec("train", ("methods/model_tuning.gin",
                                         "runs/model_finetune.gin"), False, False),
    "prefix_tuning": MethodSpec("train", ("methods/prefix_tuning.gin",
                                          "runs/prompt_finetune.gin"), True, False),
    "lopa": MethodSpec("train", ("methods/lopa.gin", "runs/prompt_finetune.gin"),
                       True, True),
    "lora": MethodSpec("train", ("methods/lora.gin", "runs/prompt_finetune.gin"),
                       False, False),
    "ia3": MethodSpec("train", ("methods/ia3.gin", "runs/prompt_finetune.gin"),
                      False, False),
    "bitfit": MethodSpec("train", ("methods/bitfit.gin", "runs/prompt_finetune.gin"),
                         False, False),
    "p_tuning_v2": MethodSpec("train", ("methods/p_tuning_v2.gin",
                                        "runs/prompt_finetune.gin"), True, False),
    "per_layer_prompt": MethodSpec("train", ("methods/per_layer_prompt.gin",
                                             "runs/prompt_finetune.gin"), True, False),
    "prompt_design": MethodSpec("eval", ("methods/prompt_design.gin",
                                         "runs/prompt_eval.gin"), False, False),
}
INITS = ("class_labels", "sampled_vocab", "random_uniform", "from_text", "from_file")
# Bindings an evaluation run cannot take (prompt_tuning.eval does not import train).
TRAIN_ONLY_MACROS = ("TRAIN_STEPS", "EVAL_PERIOD", "CHECKPOINT_PERIOD", "RANDOM_SEED",
                     "KEEP_CHECKPOINTS", "BEST_METRIC", "BATCH_SIZE", "CLASS_LABELS",
                     "PROMPT_TEXT")
TRAIN_ONLY_PREFIXES = ("TrainConfig.", "train.")
STANDARD_AXES = ("model", "method", "prompt_length", "init", "seed")
TOP_LEVEL_KEYS = ("output_dir", "task", "metric", "metric_task", "design_task",
                  "gin_files", "bindings", "models", "methods", "grid", "grids")


class SweepConfigError(UserError, ValueError):
  """The sweep file is malformed; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True)
class SweepRun:
  """One point of the grid."""
  name: str
  model: str
  method: str
  prompt_length: Optional[int]
  init: Optional[str]
  seed: int
  extra: Tuple[Tuple[str, Any], ...]
  model_dir: pathlib.Path
  run: GinRun

  @property
  def trains(self) -> bool:
    return self.run.entry == "train"


@dataclasses.dataclass
class Sweep:
  output_dir: pathlib.Path
  task: str
  metric: Optional[str]
  metric_task: str
  design_task: str
  models: Dict[str, Dict[str, Any]]
  runs: List[SweepRun]
  extra_axes: List[str]

  def train_steps(self, run: SweepRun) -> Optional[int]:
    """TRAIN_STEPS of a training run (from its bindings, else its gin files)."""
    if not run.trains:
      return None
    value = run.run.macro("TRAIN_STEPS")
    if value is not None:
      return int(value)
    from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
    run.run.parse()
    return int(cli.macro("TRAIN_STEPS"))

  def status(self, run: SweepRun, train_steps: Optional[int] = None) -> str:
    """'done', 'partial' (started, not finished) or 'missing'."""
    if not run.trains:
      done = bool(layout.evaluations(run.model_dir, self.task_of(run)))
      return "done" if done else "missing"
    steps = train_steps if train_steps is not None else self.train_steps(run)
    if layout.is_finished(run.model_dir, steps):
      return "done"
    return "partial" if layout.state_steps(run.model_dir) or (
        run.model_dir / "config.json").exists() else "missing"

  def task_of(self, run: SweepRun) -> str:
    """The task whose evaluations are collected for `run`."""
    return self.design_task if run.method == "prompt_design" else self.metric_task


# ------------------------------------------------------------------------------------
# Reading the file.
# ------------------------------------------------------------------------------------


def load_config(path: str) -> Dict[str, Any]:
  """A sweep file as a dict (`.yaml`/`.yml` or `.json`)."""
  path = pathlib.Path(path)
  text = path.read_text()
  if path.suffix in (".yaml", ".yml"):
    import yaml  # pylint: disable=g-import-not-at-top
    config = yaml.safe_load(text)
  elif path.suffix == ".json":
    config = json.loads(text)
  else:
    raise SweepConfigError(f"{path}: a sweep file is .yaml, .yml or .json.")
  if not isinstance(config, dict):
    raise SweepConfigError(f"{path}: expected a mapping at the top level.")
  return config


def _as_list(value, key: str) -> List[Any]:
  if value is None:
    return [None]
  if isinstance(value, (list, tuple)):
    if not value:
      raise SweepConfigError(f"grid.{key} is an empty list; remove it or give values.")
    return list(value)
  return [value]


def _models(config: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
  models = config.get("models")
  if not models or not isinstance(models, dict):
    raise SweepConfigError("`models:` must map a name to its gin files, e.g. "
                           "`models: {tiny: [models/tiny_bundled.gin]}`.")
  out = {}
  for name, spec in models.items():
    if isinstance(spec, (list, tuple, str)):
      spec = {"gin_files": [spec] if isinstance(spec, str) else list(spec)}
    if not isinstance(spec, dict) or not spec.get("gin_files"):
      raise SweepConfigError(f"models.{name}: give a list of gin files or a mapping "
                             "with `gin_files` (and optional `bindings`, "
                             "`parameters`).")
    out[str(name)] = {"gin_files": list(spec["gin_files"]),
                      "bindings": dict(spec.get("bindings") or {}),
                      "parameters": spec.get("parameters")}
  return out


def _path_safe(value: Any) -> str:
  text = str(value)
  return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "x"


def run_name(model: str, method: str, prompt_length: Optional[int],
             init: Optional[str], seed: int, extra: Sequence[Tuple[str, Any]]) -> str:
  """`<model>/<method>[-p<P>][-<init>][-<axis><value>…]/seed<k>`."""
  parts = [method]
  if prompt_length is not None:
    parts.append(f"p{prompt_length}")
  if init:
    parts.append(init)
  for key, value in extra:
    parts.append(f"{key.split('.')[-1]}{_path_safe(value)}")
  return f"{_path_safe(model)}/{'-'.join(parts)}/seed{seed}"


def expand(config: Mapping[str, Any], output_dir: Optional[str] = None) -> Sweep:
  """The runs of a sweep config (deduplicated, in grid order)."""
  unknown = set(config) - set(TOP_LEVEL_KEYS)
  if unknown:
    raise SweepConfigError(f"Unknown sweep keys {sorted(unknown)}; known: "
                           f"{list(TOP_LEVEL_KEYS)}.")
  task = config.get("task")
  if not task:
    raise SweepConfigError("`task:` (the MIXTURE_OR_TASK_NAME of every run) is "
                           "required.")
  out_dir = pathlib.Path(output_dir or config.get("output_dir") or "")
  if not str(out_dir) or str(out_dir) == ".":
    raise SweepConfigError("Set `output_dir:` in the sweep file or --output_dir.")
  models = _models(config)
  grids = config.get("grids") or ([config["grid"]] if config.get("grid") else [])
  if not grids:
    raise SweepConfigError("Give `grid:` (a mapping of axes to lists) or `grids:`.")
  method_extras = dict(config.get("methods") or {})
  for name in method_extras:
    if name not in METHODS:
      raise SweepConfigError(f"methods.{name}: unknown method; known: "
                             f"{sorted(METHODS)}.")
  common_files = list(config.get("gin_files") or [])
  common_bindings = dict(config.get("bindings") or {})
  design_task = config.get("design_task") or task
  runs: Dict[str, SweepRun] = {}
  extra_axes: List[str] = []
  for index, grid in enumerate(grids):
    if not isinstance(grid, dict):
      raise SweepConfigError(f"grids[{index}] must be a mapping of axes to lists.")
    axes = {key: _as_list(grid.get(key), key) for key in STANDARD_AXES}
    if axes["model"] == [None]:
      axes["model"] = list(models)
    if axes["method"] == [None]:
      raise SweepConfigError(f"grids[{index}].method: list the methods, among "
                             f"{sorted(METHODS)}.")
    if axes["seed"] == [None]:
      axes["seed"] = [0]
    extra_keys = [k for k in grid if k not in STANDARD_AXES]
    for k in extra_keys:
      if k not in extra_axes:
        extra_axes.append(k)
    extra_values = [_as_list(grid[k], k) for k in extra_keys]
    for model, method, length, init, seed, *extra in itertools.product(
        axes["model"], axes["method"], axes["prompt_length"], axes["init"],
        axes["seed"], *extra_values):
      if model not in models:
        raise SweepConfigError(f"grids[{index}].model: {model!r} is not in `models:` "
                               f"({sorted(models)}).")
      if method not in METHODS:
        raise SweepConfigError(f"grids[{index}].method: unknown method {method!r}; "
                               f"known: {sorted(METHODS)}.")
      if init is not None and init not in INITS:
        raise SweepConfigError(f"grids[{index}].init: unknown initializer {init!r}; "
                               f"known: {list(INITS)} (configs/prompts/*.gin).")
      spec = METHODS[method]
      length = int(length) if spec.uses_length and length is not None else None
      init = init if spec.uses_init else None
      extra_pairs = tuple(zip(extra_keys, extra))
      name = run_name(model, method, length, init, int(seed), extra_pairs)
      if name in runs:
        continue
      model_dir = out_dir / "runs" / name
      files = (models[model]["gin_files"] + list(spec.gin_files) +
               ([f"prompts/{init}.gin"] if init else []) + common_files +
               list((method_extras.get(method) or {}).get("gin_files") or []))
      values: Dict[str, Any] = {
          "MIXTURE_OR_TASK_NAME": design_task if method == "prompt_design" else task}
      if spec.entry == "train":
        values["MODEL_DIR"] = str(model_dir)
        values["RANDOM_SEED"] = int(seed)
      else:
        values["EVAL_OUTPUT_DIR"] = str(model_dir)
      if length is not None:
        values["PROMPT_LENGTH"] = length
      values.update(common_bindings)
      values.update(models[model]["bindings"])
      values.update((method_extras.get(method) or {}).get("bindings") or {})
      values.update(dict(extra_pairs))
      if spec.entry == "eval":  # drop what only training reads
        values = {k: v for k, v in values.items() if k not in TRAIN_ONLY_MACROS
                  and not k.startswith(TRAIN_ONLY_PREFIXES)}
      run = GinRun(spec.entry, files, [binding(k, v) for k, v in values.items()])
      runs[name] = SweepRun(name, model, method, length, init, int(seed),
                            extra_pairs, model_dir, run)
  metric_task = config.get("metric_task") or task
  return Sweep(out_dir, task, config.get("metric"), metric_task, design_task, models,
               list(runs.values()), extra_axes)


def load(path: str, output_dir: Optional[str] = None) -> Sweep:
  return expand(load_config(path), output_dir)
