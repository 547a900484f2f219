"""Every gin registration of the package, in one place (library modules stay gin-free).

The gin files import this module (`import prompt_tuning.configurables`); the entry
points import it through `cli`. The selector names are what `configs/*.gin` use:

  methods.prompt_tuning  methods.prefix_tuning  methods.lopa
  methods.model_tuning   methods.prompt_design
  methods.lora  methods.ia3  methods.p_tuning_v2  methods.per_layer_prompt
  methods.partial_tuning
  prompt_init.random_uniform  prompt_init.sampled_vocab  prompt_init.class_labels
  prompt_init.from_text       prompt_init.from_file
  optim.adafactor  optim.adafactor_prompt_tuning  optim.adafactor_model_tuning
  optim.adamw      optim.adamw_prefix_tuning      optim.adamw_lopa
  optim.adamw_lora optim.adafactor_ia3  optim.adamw_p_tuning_v2  optim.adamw_bitfit
  optim.frozen     optim.linear_schedule          optim.trainable_regexes
  decoding.greedy_decode  decoding.beam_search  decoding.sample_decode
  objectives.perceptron  objectives.valid_label  objectives.wayward  (train.objective,
    train.wayward: training/objectives.py)
  T5Config  t5_preset  partitioning.make_mesh  partitioning.rules  TrainConfig
  GPT2Config  gpt2_preset  LlamaConfig  llama_preset   (decoder-only MODEL_CONFIGs;
    the model family is the type of MODEL_CONFIG, see prompt_tuning.models.families)
  tiny_t5.checkpoint_path  tiny_t5.vocabulary_path

The entry points' own functions (`train`, `evaluate`, `infer`) are registered where
they are defined, and `tasks/` registers its own (`tasks.vocab`, `tasks.local`).

A decoder keeps the library signature once configured, e.g.
  DECODE_FN(model, params, tokens, max_decode_length=L, prompt_index=None)
  decoding.predict(model, params, batch, DECODE_FN)
(`sample_decode` also needs `rng=` at call time; `predict(..., rng=...)` passes it).
"""
from typing import Any, Optional, Sequence

import gin
import jax.numpy as jnp

from prompt_tuning import partitioning, prompt_files
from prompt_tuning.methods import (baselines, deep_prompt, ia3, initializers, lopa, lora,
                                   prefix, prompt)
from prompt_tuning.models import config as config_lib
from prompt_tuning.models import decoder_config
from prompt_tuning.models import decoding
from prompt_tuning.tiny import assets
from prompt_tuning.training import objectives, optim, trainer


def class_labels(labels: Optional[Sequence[str]] = None, vocabulary: Any = None,
                 task: Optional[str] = None,
                 fallback: Optional[initializers.Initializer] = None
                 ) -> initializers.Initializer:
  """`initializers.class_labels` with its labels and vocabulary resolved.

  Args:
    labels: the verbalizers (gin: CLASS_LABELS); None reads them from `task`.
    vocabulary: a vocabulary or SentencePiece path; None means the `targets`
      vocabulary of `task` (labels are targets), else the tasks' default
      (`tasks.vocabulary_path()`).
    task: the seqio task or mixture to read labels and vocabulary from.
    fallback: initializer for the rows after the labels.
  """

  def init(rng, shape, embedding):  # resolved at initialization, after the task checks
    names = labels if labels is not None else _task_labels(task)
    return initializers.class_labels(
        names, _task_vocabulary(vocabulary, task, "targets"), fallback)(
            rng, shape, embedding)

  return init


def from_text(text: str, vocabulary: Any = None,
              fallback: Optional[initializers.Initializer] = None,
              task: Optional[str] = None) -> initializers.Initializer:
  """`initializers.from_text` with the `inputs` vocabulary of `task` (else the
  tasks' default) when `vocabulary` is None."""
  if not isinstance(text, str):
    raise ValueError(f"prompt_init.from_text needs a string (gin: PROMPT_TEXT = "
                     f"'...'); got {text!r}.")

  def init(rng, shape, embedding):  # resolved at initialization, after the task checks
    return initializers.from_text(
        text, _task_vocabulary(vocabulary, task, "inputs"), fallback)(
            rng, shape, embedding)

  return init


def _task_labels(task: Optional[str]) -> Sequence[str]:
  if task is None:
    raise ValueError("class_labels needs `labels` (gin: CLASS_LABELS) or a `task` to "
                     "read them from.")
  import tasks  # pylint: disable=g-import-not-at-top  # seqio + TF: only when asked
  found = tasks.get_label_strings(task)
  if not found:
    raise ValueError(f"class_labels: task {task!r} has no class labels (not a "
                     f"classification task); bind CLASS_LABELS or use another "
                     f"initializer (configs/prompts/*.gin).")
  return list(found)


def _task_vocabulary(vocabulary: Any, task: Optional[str], feature: str) -> Any:
  """`vocabulary` as given; else the `feature` vocabulary of the seqio `task` (so
  tasks with their own vocabulary tokenize correctly), else the tasks' default."""
  if vocabulary is not None:
    return vocabulary
  import tasks  # pylint: disable=g-import-not-at-top  # seqio + TF: only when asked
  if task is not None:
    import seqio  # pylint: disable=g-import-not-at-top
    return seqio.get_mixture_or_task(task).output_features[feature].vocabulary
  return tasks.vocabulary_path()  # gin / $PROMPT_TUNING_VOCAB aware


_REGISTRATIONS = {
    "methods": [prompt.prompt_tuning, prefix.prefix_tuning, lopa.lopa,
                baselines.model_tuning, baselines.prompt_design, lora.lora, ia3.ia3,
                prefix.p_tuning_v2, deep_prompt.per_layer_prompt,
                baselines.partial_tuning],
    "prompt_init": [initializers.random_uniform, initializers.sampled_vocab,
                    class_labels, from_text, prompt_files.from_file],
    "optim": [optim.adafactor, optim.adafactor_prompt_tuning,
              optim.adafactor_model_tuning, optim.adamw, optim.adamw_prefix_tuning,
              optim.adamw_lopa, optim.adamw_lora, optim.adafactor_ia3,
              optim.adamw_p_tuning_v2, optim.adamw_bitfit, optim.frozen,
              optim.linear_schedule,
              optim.trainable_regexes],
    "decoding": [decoding.greedy_decode, decoding.beam_search, decoding.sample_decode],
    "objectives": [objectives.perceptron, objectives.valid_label, objectives.wayward],
}

# name → the registered (gin-wrapped) callable, e.g. CONFIGURABLES['methods.lopa'].
CONFIGURABLES = {
    f"{module}.{fn.__name__}": gin.external_configurable(fn, module=module)
    for module, fns in _REGISTRATIONS.items() for fn in fns
}


def _gin_values(overrides):
  """dtype names (`dtype = 'bfloat16'`) and a `rope_scaling` dict, as gin gives them."""
  if isinstance(overrides.get("dtype"), str):
    overrides["dtype"] = jnp.dtype(overrides["dtype"]).type
  if isinstance(overrides.get("rope_scaling"), dict):
    overrides["rope_scaling"] = tuple(sorted(overrides["rope_scaling"].items()))
  return overrides


def _preset(name: str, **overrides) -> config_lib.T5Config:
  """`config.preset` that also takes dtype names (`dtype = 'bfloat16'`) from gin."""
  return config_lib.preset(name, **_gin_values(overrides))


def _gpt2_preset(name: str, **overrides) -> decoder_config.GPT2Config:
  """`decoder_config.gpt2_preset`, also taking dtype names from gin."""
  return decoder_config.gpt2_preset(name, **_gin_values(overrides))


def _llama_preset(name: str, **overrides) -> decoder_config.LlamaConfig:
  """`decoder_config.llama_preset`, also taking dtype names and a rope_scaling dict."""
  return decoder_config.llama_preset(name, **_gin_values(overrides))


t5_preset = gin.external_configurable(_preset, "t5_preset")
T5Config = gin.external_configurable(config_lib.T5Config, "T5Config")
gpt2_preset = gin.external_configurable(_gpt2_preset, "gpt2_preset")
llama_preset = gin.external_configurable(_llama_preset, "llama_preset")
GPT2Config = gin.external_configurable(decoder_config.GPT2Config, "GPT2Config")
LlamaConfig = gin.external_configurable(decoder_config.LlamaConfig, "LlamaConfig")
make_mesh = gin.external_configurable(partitioning.make_mesh, "partitioning.make_mesh")
axis_rules = gin.external_configurable(partitioning.rules, "partitioning.rules")
TrainConfig = gin.external_configurable(trainer.TrainConfig, "TrainConfig")
# `method` → its trainable regexes, or `optim.trainable_regexes.regexes` when bound.
trainable_regexes = CONFIGURABLES["optim.trainable_regexes"]


@gin.configurable(module="tiny_t5")
def checkpoint_path() -> str:
  """`prompt_tuning/assets/tiny_t5/checkpoint` (the bundled native checkpoint)."""
  assets.check_present()
  return str(assets.CHECKPOINT_PATH)


@gin.configurable(module="tiny_t5")
def vocabulary_path() -> str:
  """`prompt_tuning/assets/tiny_t5/sentencepiece.model` (100 extra ids on top)."""
  assets.check_present()
  return str(assets.VOCAB_PATH)
