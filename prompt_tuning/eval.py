r"""Evaluate a frozen T5 + trained method parameters: `python -m prompt_tuning.eval`.

Either a released prompt file (through the from-file prompt initializer) …

  python -m prompt_tuning.eval \
    --gin_file=models/t5_1_1_base.gin --gin_file=methods/prompt_tuning.gin \
    --gin_file=runs/prompt_eval.gin --gin_file=prompts/from_file.gin \
    --gin.PROMPT_FILE="'rte.npy'" \
    --gin.MIXTURE_OR_TASK_NAME="'super_glue_rte_v102'" \
    --gin.INITIAL_CHECKPOINT_PATH="'gs://…/t5_1_1_lm100k_base/checkpoint_1100000'"

… or a trained MODEL_DIR (its `best/` export by default, `latest`, or a step); the
method, the frozen model and its config then come from `MODEL_DIR/config.json`:

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
from prompt_tuning import cli, configurables, building, fingerprint, gin_specs, prompt_files
from prompt_tuning.tiny import assets
from prompt_tuning.methods import multitask
from prompt_tuning.training import evaluation
from prompt_tuning.run_dir import identity as run_identity
from prompt_tuning.run_dir import train_state as ckpt
from prompt_tuning.run_dir import summaries as summaries_lib
from prompt_tuning.errors import UserError
from prompt_tuning.prompt_files import check_prompt_file
from prompt_tuning.methods.base import Method
from prompt_tuning.models import families, scan
from prompt_tuning.models.config import T5Config

EVAL_MACROS = ("MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS")


class EvalError(UserError, ValueError):
  """What to evaluate cannot be found or does not match (one line, exit 1)."""


def load_trained(method: Method, model_config: Optional[T5Config],
                 initial_checkpoint_path: Optional[str], *,
                 model_dir: Optional[str] = None, checkpoint: Union[str, int] = "best",
                 mesh=None, seed: int = 0, vocabulary: Any = None,
                 prompt_file: Optional[str] = None,
                 allow_model_mismatch: bool = False
                 ) -> Tuple[Any, Dict[str, Any], Any, str]:
  """Model + parameters for evaluation or inference.

  With `model_dir`, the method's `.npy` export there replaces its parameters (a
  method that exports nothing, like model tuning, is read from the orbax
  checkpoint instead), and the frozen model / config default to those recorded in
  `config.json`; without it the method's initializer runs (e.g. a prompt from
  `PROMPT_FILE`).

  The export (or `prompt_file`) must have been trained on this frozen model,
  `vocabulary` and placement (`prompt_tuning.fingerprint`), unless
  `allow_model_mismatch`; one without a fingerprint loads with a warning.

  Returns:
    (model, params, shardings, description of what was loaded).
  """
  export = None
  if model_dir:
    record = layout.read_record(model_dir)
    if record.get("method") != method.name:
      raise EvalError(f"{model_dir} was trained with method {record.get('method')!r} "
                       f"but METHOD is {method.name!r}; include the same method gin "
                       "file as for training.")
    if initial_checkpoint_path is None:
      initial_checkpoint_path = assets.locate(record.get("initial_checkpoint_path"))
    if model_config is None:
      model_config = families.config_from_dict(record["model_config"])
    export = layout.export_dir(model_dir, checkpoint)
  if model_config is None:
    raise EvalError("No model config: set MODEL_CONFIG (include a models/*.gin file) "
                     "or pass a MODEL_DIR that has config.json.")
  # A run trained with scan_layers evaluates unscanned: same exports, and decoding
  # needs the per-layer cache.
  model_config = scan.unscanned(model_config)
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
  checked = str(export) if has_npy else prompt_file
  if checked:
    current = fingerprint.of_params(
        params, vocabulary, fingerprint.placement(run_method),
        name=initial_checkpoint_path or "a randomly initialized model",
        embedding_path=families.embedding_path(config))
    prompt_files.check_model(checked, current, allow=allow_model_mismatch)
  return run_method.build(config), params, shardings, source


def _orbax_trained(method: Method, params: Dict[str, Any], model_dir: str,
                   step: int) -> Tuple[Dict[str, Any], str]:
  """`params` with the trained subtree of an orbax checkpoint (model tuning).

  Uses checkpoint `step` when it is still kept, else the latest one (logged).
  """
  checkpointer = ckpt.StateCheckpointer(model_dir, keep=None)
  steps = checkpointer.all_steps()
  if not steps:
    raise layout.ExportNotFoundError(f"{model_dir} has neither .npy exports nor "
                                     "orbax checkpoints to evaluate.")
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


def resolve_method(method: Optional[Method], model_dir: Optional[str]) -> Method:
  """The method to evaluate: a MODEL_DIR's recorded one, else METHOD."""
  given_spec = gin_specs.macro_spec("METHOD") if method is None else None
  if model_dir:
    recorded = layout.read_record(model_dir).get("method_spec")
    if recorded:
      run_identity.check_method_matches(model_dir, recorded, given_spec)
      return gin_specs.rebuild_method(recorded)
  if method is None and given_spec is not None:
    method = cli.macro("METHOD")
  if method is None:
    raise cli.MissingMacrosError(
        "METHOD is not set and no MODEL_DIR records one: add "
        f"{cli.EXAMPLES['METHOD']}.")
  return method


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
             method: Optional[Method] = None,
             model_config: Optional[T5Config] = None,
             initial_checkpoint_path: Optional[str] = None,
             model_dir: Optional[str] = None,
             checkpoint: Union[str, int] = "best",
             split: str = "validation",
             batch_size: int = 32,
             max_examples: Optional[int] = None,
             max_decode_length: Optional[int] = None,
             decode_fn: Optional[Any] = None,
             output_dir: Optional[str] = None,
             allow_prompt_model_mismatch: Optional[bool] = None
             ) -> Dict[str, evaluation.TaskResult]:
  """Evaluates and reports (gin: `evaluate.<arg>`; macros in runs/prompt_eval.gin).

  `model_dir`, `initial_checkpoint_path` and `output_dir` default to the macros
  MODEL_DIR, INITIAL_CHECKPOINT_PATH and EVAL_OUTPUT_DIR when those are defined.
  With a MODEL_DIR the method is rebuilt from its config.json (a METHOD that
  contradicts it is an error); otherwise `method` defaults to the METHOD macro.
  `allow_prompt_model_mismatch` defaults to ALLOW_PROMPT_MODEL_MISMATCH (else False).
  """
  model_dir = model_dir if model_dir is not None else cli.macro("MODEL_DIR")
  method = resolve_method(method, model_dir)
  if model_config is None:  # a models/*.gin, else the MODEL_DIR's recorded config
    model_config = cli.macro("MODEL_CONFIG")
  if initial_checkpoint_path is None:
    initial_checkpoint_path = cli.macro("INITIAL_CHECKPOINT_PATH")
  output_dir = output_dir if output_dir is not None else cli.macro("EVAL_OUTPUT_DIR")
  # A misspelt task fails here (with close matches), before the model is loaded.
  from prompt_tuning import data  # pylint: disable=g-import-not-at-top
  data.get_task(mixture_or_task_name)
  prompt_file = cli.macro("PROMPT_FILE")
  if not model_dir and isinstance(prompt_file, str) and prompt_file:
    # Before any frozen weight is read: P of the method, H of the model.
    check_prompt_file(prompt_file, getattr(method.prompt, "length", None),
                      getattr(model_config, "emb_dim", None))
  if allow_prompt_model_mismatch is None:
    allow_prompt_model_mismatch = bool(cli.macro("ALLOW_PROMPT_MODEL_MISMATCH", False))
  import tasks  # pylint: disable=g-import-not-at-top
  mesh = configurables.make_mesh()
  model, params, shardings, source = load_trained(
      method, model_config, initial_checkpoint_path, model_dir=model_dir,
      checkpoint=checkpoint, mesh=mesh,
      vocabulary=tasks.task_vocabulary(mixture_or_task_name),
      prompt_file=None if model_dir else cli.macro("PROMPT_FILE"),
      allow_model_mismatch=allow_prompt_model_mismatch)
  if not model_dir and cli.macro("PROMPT_FILE"):
    source = str(cli.macro("PROMPT_FILE"))
  evaluator = evaluation.Evaluator(
      model, mesh, shardings, mixture_or_task_name, task_feature_lengths,
      batch_size=batch_size, split=split, max_examples=max_examples,
      max_decode_length=max_decode_length,
      decode_fn=configurables.decode_fn_for(getattr(model, "config", None), decode_fn),
      axis_rules=configurables.axis_rules(),
      prompt_rows=multitask.task_rows(method))  # a multi-task run: each task its row
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
    raise cli.MissingMacrosError(
        "Nothing to evaluate: set MODEL_DIR (a training run), or the frozen model "
        "INITIAL_CHECKPOINT_PATH with a prompt (prompts/from_file.gin + PROMPT_FILE); "
        "e.g. "
        f"{cli.EXAMPLES['MODEL_DIR']} or {cli.EXAMPLES['PROMPT_FILE']}.")
  evaluate()


def console_main():
  cli.run(main)


if __name__ == "__main__":
  console_main()
