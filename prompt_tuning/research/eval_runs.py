"""Many prompt sources x many tasks through `prompt_tuning.eval`.

A source is one of:
  * a prompt file `.npy` `[P, H]` (e.g. a released prompt): prompts/from_file.gin;
  * a training MODEL_DIR of prompt tuning, prefix tuning or LoPA: its export is
    evaluated with the method's gin (prompt length and LoPA sizes read from the
    exported shapes);
  * a model-tuned MODEL_DIR: its weights are exported once as a native checkpoint
    (`model_dirs.export_model`) and evaluated as the frozen model of
    methods/prompt_design.gin;
  * `frozen`: the frozen model alone (prompt design: whatever text the task puts in
    its inputs).

  runs = eval_runs(source, ["taskless_tiny_topic", …], model_gin_files=[…])
  rows = evaluate(sources, tasks, model_gin_files=[…])   # one row per source x task

Every evaluation is one `python -m prompt_tuning.eval` call (`GinRun.command()`).
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from prompt_tuning import prompt_files
from prompt_tuning.run_dir import layout
from prompt_tuning.research import model_dirs
from prompt_tuning.research.runs import GinRun, binding

FROZEN = "frozen"
METHOD_GINS = {"prompt": "methods/prompt_tuning.gin",
               "prefix": "methods/prefix_tuning.gin",
               "lopa": "methods/lopa.gin",
               "model": "methods/prompt_design.gin",
               "design": "methods/prompt_design.gin"}


@dataclasses.dataclass(frozen=True)
class Source:
  """Something to evaluate: `kind` is 'prompt_file', 'model_dir' or 'frozen'."""
  name: str
  path: Optional[str]
  kind: str
  method: str  # prompt | prefix | lopa | model | design


def source(spec: str, name: Optional[str] = None) -> Source:
  """`[NAME=]PATH` (or `frozen`) → a `Source`; errors say what was expected."""
  if name is None and "=" in spec and not pathlib.Path(spec).exists():
    name, spec = spec.split("=", 1)
  if spec == FROZEN:
    return Source(name or FROZEN, None, "frozen", "design")
  path = pathlib.Path(spec)
  if not path.exists():
    raise FileNotFoundError(f"Source {spec!r} does not exist: give a .npy prompt, a "
                            f"training MODEL_DIR or {FROZEN!r}.")
  default_name = path.stem if path.is_file() else path.name
  if path.is_file():
    if path.suffix != ".npy":
      raise ValueError(f"{path}: a prompt file is a .npy [P, H] array.")
    return Source(name or default_name, str(path), "prompt_file", "prompt")
  if not layout.is_model_dir(path):
    raise ValueError(f"{path} is a directory without config.json: not a training "
                     "MODEL_DIR (for an export directory pass its .npy file).")
  method = layout.read_record(path).get("method")
  if method not in METHOD_GINS:
    raise ValueError(f"{path}: cannot evaluate method {method!r}; known: "
                     f"{sorted(METHOD_GINS)}.")
  return Source(name or default_name, str(path), "model_dir", method)


def shape_bindings(src: Source, checkpoint: Union[str, int] = "best") -> List[str]:
  """PROMPT_LENGTH (and LoPA's sizes) read from what the source will load."""
  if src.kind == "prompt_file":
    return [binding("PROMPT_LENGTH", int(np.load(src.path, mmap_mode="r").shape[0]))]
  if src.kind != "model_dir" or src.method not in ("prompt", "prefix", "lopa"):
    return []
  arrays = layout.exported_arrays(src.path, checkpoint)
  if src.method == "prefix":
    return [binding("PROMPT_LENGTH", int(arrays["prefix.encoder.key"].shape[1]))]
  prompt = arrays[prompt_files.PROMPT_EXPORT]
  out = [binding("PROMPT_LENGTH", int(prompt.shape[0]))]
  if src.method == "lopa":
    v_kernel = arrays["encoder.prompt.v_head.out_kernel"]  # [hidden, H * rank]
    out += [binding("LOPA_RANK", int(v_kernel.shape[1] // prompt.shape[1])),
            binding("methods.lopa.hidden_dim", int(v_kernel.shape[0]))]
  return out


def model_config_bindings(model_dir: str) -> List[str]:
  """MODEL_CONFIG as recorded in a MODEL_DIR's config.json (no models/*.gin)."""
  config = dict(layout.read_record(model_dir)["model_config"])
  config.pop("dtype", None)
  return ["MODEL_CONFIG = @T5Config()"] + [binding(f"T5Config.{k}", v)
                                          for k, v in sorted(config.items())]


def eval_run(src: Source, task: str, *, model_gin_files: Sequence[str] = (),
             gin_files: Sequence[str] = (), bindings: Sequence[str] = (),
             checkpoint: Union[str, int] = "best",
             initial_checkpoint_path: Optional[str] = None,
             output_dir: Optional[str] = None) -> GinRun:
  """The `prompt_tuning.eval` call evaluating `src` on `task`.

  Args:
    src: what to evaluate.
    task: MIXTURE_OR_TASK_NAME.
    model_gin_files: the frozen model's gins (e.g. models/t5_1_1_base.gin); may be
      empty for a MODEL_DIR (its config.json has the model config).
    gin_files: more gin files, after the run/method gins (e.g. feature lengths).
    bindings: more `NAME = VALUE` bindings, last.
    checkpoint: which export of a MODEL_DIR: 'best', 'latest' or a step (model
      tuning: 'best' means the latest state, its only saved weights).
    initial_checkpoint_path: the frozen model, when the gins do not bind it.
    output_dir: EVAL_OUTPUT_DIR (metrics.jsonl of the evaluations).
  """
  files = list(model_gin_files) + ["runs/prompt_eval.gin", METHOD_GINS[src.method]]
  values = [binding("MIXTURE_OR_TASK_NAME", task)]
  last = []  # bindings that must win over the caller's
  if src.kind == "prompt_file":
    files.append("prompts/from_file.gin")
    values.append(binding("PROMPT_FILE", str(pathlib.Path(src.path).absolute())))
  if initial_checkpoint_path:
    values.append(binding("INITIAL_CHECKPOINT_PATH", initial_checkpoint_path))
  if src.kind == "model_dir":
    if not model_gin_files:
      values += model_config_bindings(src.path)
    if src.method == "model":
      step = "latest" if checkpoint == "best" else checkpoint
      exported = model_dirs.export_model(src.path, step)
      last.append(binding("INITIAL_CHECKPOINT_PATH", str(exported.absolute())))
    else:
      values += [binding("MODEL_DIR", str(pathlib.Path(src.path).absolute())),
                 binding("evaluate.checkpoint", checkpoint)]
  values += shape_bindings(src, checkpoint)
  if output_dir:
    values.append(binding("EVAL_OUTPUT_DIR", str(output_dir)))
  return GinRun("eval", files + list(gin_files), values + list(bindings) + last)


def result_rows(src: Source, results: Dict[str, Any], split: str = "validation"
                ) -> List[Dict[str, Any]]:
  """`{source, path, method, task, split, <numeric metrics>}` per evaluated task."""
  rows = []
  for task, result in results.items():
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    rows.append(dict(source=src.name, path=src.path or "", method=src.method,
                     task=task, split=split, **metrics))
  return rows


def evaluate(sources: Sequence[Source], tasks: Sequence[str], *,
             output_dir: Optional[str] = None, split: str = "validation",
             **run_kwargs) -> List[Dict[str, Any]]:
  """Evaluates every source on every task (in this process); one row per pair.

  `run_kwargs` go to `eval_run` (model gins, gin files, bindings, checkpoint, …);
  EVAL_OUTPUT_DIR is `<output_dir>/evals/<source name>` when `output_dir` is given.
  """
  rows = []
  for src in sources:
    for task in tasks:
      out = (pathlib.Path(output_dir) / "evals" / src.name) if output_dir else None
      run = eval_run(src, task, output_dir=out, **run_kwargs)
      run = run.with_bindings(binding("EVAL_SPLIT", split))
      rows += result_rows(src, run.run_in_process(), split)
  return rows
