r"""Train a parameter-efficient method on a frozen T5: `python -m prompt_tuning.train`.

  python -m prompt_tuning.train \
    --gin_file=models/t5_1_1_base.gin \
    --gin_file=methods/prompt_tuning.gin \
    --gin_file=prompts/class_labels.gin \
    --gin_file=runs/prompt_finetune.gin \
    --gin.MODEL_DIR="'/tmp/rte_prompt'" \
    --gin.MIXTURE_OR_TASK_NAME="'super_glue_rte_v102'" \
    --gin.INITIAL_CHECKPOINT_PATH="'gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000'"

Rerunning the same command resumes from the latest checkpoint in MODEL_DIR. See
docs/TRAINING.md for the full workflow. Gin binds `TrainConfig` and `train` below;
everything they need comes in as arguments.
"""
from __future__ import annotations

import logging as std_logging
from typing import Any, Callable, Dict, Optional, Sequence

import gin
import jax
import optax

from prompt_tuning import cli, configurables, errors
from prompt_tuning.run_dir import identity as run_identity
from prompt_tuning.run_dir import train_state as ckpt
from prompt_tuning.training import trainer
from prompt_tuning.methods.base import Method
from prompt_tuning.methods.initializers import check_prompt_file
from prompt_tuning.models.config import T5Config



@gin.configurable("train", denylist=["gin_config"])
def train(config: trainer.TrainConfig = gin.REQUIRED,
          method: Method = gin.REQUIRED,
          optimizer: optax.GradientTransformation = gin.REQUIRED,
          model_config: T5Config = gin.REQUIRED,
          initial_checkpoint_path: Optional[str] = gin.REQUIRED,
          learning_rate_fn: Optional[Callable[[int], float]] = None,
          decode_fn: Optional[Callable[..., Any]] = None,
          gin_config: Optional[str] = None) -> trainer.TrainResult:
  """Builds the mesh and runs `trainer.train` (gin: `train.<arg>`)."""
  check_method_prompt_file(method, model_config)  # before any frozen weight is read
  identity = identity_from_gin(config)
  # A restart that changes the run is refused before anything is written.
  record = dict(trainer.run_record(config, method, model_config,
                                   initial_checkpoint_path), **identity)
  ckpt.check_or_write_run_config(config.model_dir, record, write=False)
  mesh = configurables.make_mesh()
  learning_rate_fn = learning_rate_fn or _bound_learning_rate()
  return trainer.train(config, method=method, model_config=model_config,
                       optimizer=optimizer,
                       initial_checkpoint_path=initial_checkpoint_path, mesh=mesh,
                       axis_rules=configurables.axis_rules(),
                       learning_rate_fn=learning_rate_fn,
                       decode_fn=decode_fn, gin_config=gin_config, identity=identity)


def identity_from_gin(config: trainer.TrainConfig) -> Dict[str, Any]:
  """What config.json records beyond the trainer's own fields: the method and
  optimizer as gin built them, local data fingerprints, the process count."""
  from tasks import local  # pylint: disable=g-import-not-at-top  (tasks is optional)
  return {
      "method_spec": run_identity.macro_spec("METHOD"),
      "optimizer_spec": run_identity.macro_spec("OPTIMIZER"),
      "data_fingerprints": run_identity.fingerprints(
          local.data_files(config.mixture_or_task_name)),
      "process_count": jax.process_count(),
  }


def check_method_prompt_file(method: Method, model_config: Optional[T5Config]) -> None:
  """PROMPT_FILE (prompts/from_file.gin) against the method's P and the model's H."""
  path = cli.macro("PROMPT_FILE")
  if isinstance(path, str) and path:
    check_prompt_file(path, getattr(method.prompt, "length", None),
                      getattr(model_config, "emb_dim", None))


def _bound_learning_rate() -> Optional[Callable[[int], float]]:
  """A constant `learning_rate` bound to OPTIMIZER's builder, for the summaries."""
  try:
    reference = gin.query_parameter("OPTIMIZER/macro.value")
    value = gin.query_parameter(f"{reference.configurable.selector}.learning_rate")
  except (ValueError, AttributeError):
    return None
  if isinstance(value, (int, float)):
    return lambda step: float(value)
  return None


def main(argv: Sequence[str]) -> Any:
  if len(argv) > 1:
    raise cli.app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.setup(required_macros=cli.TRAIN_MACROS)
  result = train(gin_config=gin.config_str())
  if result.preempted:  # a non-zero status, so that schedulers do not read success
    raise errors.Preempted(
        f"Stopped at step {result.step} on SIGTERM after writing its checkpoint; "
        "rerun the same command to resume (exit status "
        f"{errors.EXIT_PREEMPTED}).")
  # The root logger (as the trainer's lines): absl's own logger is set to WARNING.
  std_logging.info("Done at step %d.", result.step)


def console_main():
  cli.run(main)


if __name__ == "__main__":
  console_main()
