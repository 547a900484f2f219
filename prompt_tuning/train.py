r"""Train a parameter-efficient method on a frozen T5: `python -m prompt_tuning.train`.

  python -m prompt_tuning.train \
    --gin_file=models/t5_1_1_base.gin \
    --gin_file=runs/prompt_finetune.gin \
    --gin.MODEL_DIR="'/tmp/rte_prompt'" \
    --gin.MIXTURE_OR_TASK_NAME="'super_glue_rte_v102'" \
    --gin.INITIAL_CHECKPOINT_PATH="'gs://t5-data/pretrained_models/t5x/t5_1_1_lm100k_base/checkpoint_1100000'"

Rerunning the same command resumes from the latest checkpoint in MODEL_DIR. See
docs/TRAINING.md for the full workflow. Gin binds `TrainConfig` and `train` below;
everything they need comes in as arguments.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import gin
import optax
from absl import logging

from prompt_tuning import cli, configurables
from prompt_tuning.training import trainer
from prompt_tuning.methods.base import Method
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
  mesh = configurables.make_mesh()
  learning_rate_fn = learning_rate_fn or _bound_learning_rate()
  return trainer.train(config, method=method, model_config=model_config,
                       optimizer=optimizer,
                       initial_checkpoint_path=initial_checkpoint_path, mesh=mesh,
                       axis_rules=configurables.axis_rules(), learning_rate_fn=learning_rate_fn,
                       decode_fn=decode_fn, gin_config=gin_config)


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
  if result.preempted:
    logging.warning("Preempted at step %d; checkpoint written.", result.step)
  logging.info("Done at step %d.", result.step)


def console_main():
  cli.run(main)


if __name__ == "__main__":
  console_main()
