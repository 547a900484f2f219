r"""Evaluate a frozen T5 + trained method parameters: `python -m prompt_tuning.eval`.

Either a released prompt file (through the from-file prompt initializer) …

  python -m prompt_tuning.eval \
    --gin_file=models/t5_1_1_base.gin --gin_file=runs/prompt_eval.gin \
    --gin.PROMPT_FILE="'rte.npy'" \
    --gin.MIXTURE_OR_TASK_NAME="'super_glue_rte_v102'" \
    --gin.INITIAL_CHECKPOINT_PATH="'gs://…/t5_1_1_lm100k_base/checkpoint_1100000'"

… or a trained MODEL_DIR (its `best/` export by default, `latest`, or a step); the
frozen model and its config then come from `MODEL_DIR/config.json`:

  python -m prompt_tuning.eval --gin_file=runs/prompt_eval.gin \
    --gin.MODEL_DIR="'/tmp/rte_prompt'" --gin.MIXTURE_OR_TASK_NAME=... 

Prints a table and appends one line per task to `<output_dir>/metrics.jsonl`.
"""
from __future__ import annotations

import pathlib
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import gin
import jax
from absl import logging

from prompt_tuning.run_dir import layout
from prompt_tuning import params as params_lib
from prompt_tuning import cli, configurables, building
from prompt_tuning.training import evaluation
from prompt_tuning.run_dir import train_state as ckpt
from prompt_tuning.run_dir import summaries as summaries_lib
from prompt_tuning.methods.base import Method
from prompt_tuning.models.config import T5Config

EVAL_MACROS = ("MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS")


def load_trained(method: Method, model_config: Optional[T5Config],
                 initial_checkpoint_path: Optional[str], *,
                 model_dir: Optional[str] = None, checkpoint: Union[str, int] = "best",
                 mesh=None, seed: int = 0) -> Tuple[Any, Dict[str, Any], Any, str]:
  """Model + parameters for evaluation or inference.

  With `model_dir`, the method's `.npy` export there replaces its parameters (a
  method that exports nothing, like model tuning, is read from the orbax
  checkpoint instead), and the frozen model / config default to those recorded in
  `config.json`; without it the method's initializer runs (e.g. a prompt from
  `PROMPT_FILE`).

  Returns:
    (model, params, shardings, description of what was loaded).
  """
  export = None
  if model_dir:
    record = layout.read_record(model_dir)
    if record.get("method") != method.name:
      raise ValueError(f"{model_dir} was trained with method {record.get('method')!r} "
                       f"but METHOD is {method.name!r}; include the same method gin "
                       "file as for training.")
    if initial_checkpoint_path is None:
      initial_checkpoint_path = record.get("initial_checkpoint_path")
    if model_config is None:
      model_config = T5Config.from_dict(record["model_config"])
    export = layout.export_dir(model_dir, checkpoint)
  if model_config is None:
    raise ValueError("No model config: set MODEL_CONFIG (include a models/*.gin file) "
                     "or pass a MODEL_DIR that has config.json.")
  has_npy = export is not None and any(export.glob("*.npy"))
  run_method = method.inference_method() if has_npy else method
  config, params, shardings = building.build_params(
      run_method, model_config, initial_checkpoint_path, jax.random.PRNGKey(seed),
      mesh=mesh, run_initializer=export is None)
  if has_npy:
    params = building.apply_exported(params, layout.read_arrays(str(export)),
                                           str(export))
    source = str(export)
  elif export is not None:
    params, source = _orbax_trained(method, params, model_dir, _step_of(str(export)))
  else:
    source = "the method's initializer"
  return run_method.build(config), params, shardings, source


def _orbax_trained(method: Method, params: Dict[str, Any], model_dir: str,
                   step: int) -> Tuple[Dict[str, Any], str]:
  """`params` with the trained subtree of an orbax checkpoint (model tuning).

  Uses checkpoint `step` when it is still kept, else the latest one (logged).
  """
  from prompt_tuning.training import trainer  # pylint: disable=g-import-not-at-top
  checkpointer = ckpt.StateCheckpointer(model_dir, keep=None)
  steps = checkpointer.all_steps()
  if not steps:
    raise FileNotFoundError(f"{model_dir} has neither .npy exports nor orbax "
                            "checkpoints to evaluate.")
  if step not in steps:
    logging.warning("The orbax checkpoint of step %d is not kept in %s; evaluating "
                    "the latest one (%d).", step, model_dir, steps[-1])
    step = steps[-1]
  trainable, frozen = params_lib.split(params, method.trainable)
  restored = checkpointer.restore_trainable(step, trainable)
  checkpointer.close()
  if all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(trainable)):
    restored = building.place(
        restored, jax.tree_util.tree_map(lambda x: x.sharding, trainable))
  return (params_lib.merge(restored, frozen),
          f"{model_dir}/{layout.STEP_PREFIX}_{step}")


def format_table(results: Mapping[str, evaluation.TaskResult]) -> str:
  """A plain text table: one row per task, one column per numeric metric."""
  names = []
  for r in results.values():
    names += [k for k, v in r.metrics.items()
              if isinstance(v, (int, float)) and k not in names]
  rows = [["task"] + names]
  for task, r in results.items():
    rows.append([task] + [f"{r.metrics[n]:.4g}" if isinstance(r.metrics.get(n), float)
                          else str(r.metrics.get(n, "")) for n in names])
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


@gin.configurable("evaluate")
def evaluate(mixture_or_task_name: str = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             method: Method = gin.REQUIRED,
             model_config: Optional[T5Config] = None,
             initial_checkpoint_path: Optional[str] = None,
             model_dir: Optional[str] = None,
             checkpoint: Union[str, int] = "best",
             split: str = "validation",
             batch_size: int = 32,
             max_examples: Optional[int] = None,
             max_decode_length: Optional[int] = None,
             decode_fn: Optional[Any] = None,
             output_dir: Optional[str] = None) -> Dict[str, evaluation.TaskResult]:
  """Evaluates and reports (gin: `evaluate.<arg>`; macros in runs/prompt_eval.gin).

  `model_dir`, `initial_checkpoint_path` and `output_dir` default to the macros
  MODEL_DIR, INITIAL_CHECKPOINT_PATH and EVAL_OUTPUT_DIR when those are defined.
  """
  model_dir = model_dir if model_dir is not None else cli.macro("MODEL_DIR")
  if initial_checkpoint_path is None:
    initial_checkpoint_path = cli.macro("INITIAL_CHECKPOINT_PATH")
  output_dir = output_dir if output_dir is not None else cli.macro("EVAL_OUTPUT_DIR")
  # A misspelt task fails here (with close matches), before the model is loaded.
  from prompt_tuning import data  # pylint: disable=g-import-not-at-top
  data.get_task(mixture_or_task_name)
  mesh = configurables.make_mesh()
  model, params, shardings, source = load_trained(
      method, model_config, initial_checkpoint_path, model_dir=model_dir,
      checkpoint=checkpoint, mesh=mesh)
  if not model_dir and cli.macro("PROMPT_FILE"):
    source = str(cli.macro("PROMPT_FILE"))
  evaluator = evaluation.Evaluator(
      model, mesh, shardings, mixture_or_task_name, task_feature_lengths,
      batch_size=batch_size, split=split, max_examples=max_examples,
      max_decode_length=max_decode_length, decode_fn=decode_fn)
  results = evaluator.evaluate(params)
  table = format_table(results)
  if jax.process_index() == 0:
    print(f"Evaluated {source} on {split}:\n{table}", flush=True)
  output_dir = output_dir or model_dir
  if output_dir:
    writer = summaries_lib.Summaries(output_dir, enabled=jax.process_index() == 0)
    step = _step_of(source)
    for task, result in results.items():
      writer.record(step, task, result.metrics, split=split, source=source)
    writer.close()
  return results


def _step_of(source: str) -> int:
  """The training step an export belongs to (best.json or checkpoint_<step>)."""
  path = pathlib.Path(source)
  record = path / layout.BEST_JSON
  if record.exists():
    import json  # pylint: disable=g-import-not-at-top
    return int(json.loads(record.read_text())["step"])
  if path.name.startswith(f"{layout.STEP_PREFIX}_"):
    return int(path.name.split("_")[-1])
  return 0


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise cli.app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.setup(required_macros=EVAL_MACROS)
  if not cli.macro("MODEL_DIR") and not cli.macro("INITIAL_CHECKPOINT_PATH"):
    raise cli.app.UsageError(
        "Nothing to evaluate: set MODEL_DIR (a training run), or the frozen model "
        "INITIAL_CHECKPOINT_PATH with a prompt (prompts/from_file.gin + PROMPT_FILE); "
        "e.g. "
        f"{cli.EXAMPLES['MODEL_DIR']} or {cli.EXAMPLES['PROMPT_FILE']}.")
  evaluate()


def console_main():
  cli.run(main)


if __name__ == "__main__":
  console_main()
