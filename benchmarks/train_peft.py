"""What users would pick instead: Hugging Face PEFT prompt tuning, PyTorch on CPU.

`T5ForConditionalGeneration.from_pretrained` reads the same weights as ours (the
shared directory of `benchmarks/weights.py`), `get_peft_model` wraps it with a
`PromptTuningConfig(SEQ_2_SEQ_LM, num_virtual_tokens=P)` whose prompt is set to the
same `[P, H]` values, and the step is the usual PyTorch loop in train mode (dropout
0.1, as our T5X-style step): forward with `labels` (Hugging Face shifts them right
into decoder inputs exactly as our batch does), backward, optimizer step, zero grads.
The frozen model has `requires_grad=False`, so autograd computes no weight gradient
either. `use_cache=False`: no key/value cache is built while training.

The optimizer is `transformers.optimization.Adafactor`, set to the update of our
`optim.adafactor_prompt_tuning()`:

  ours (optax, T5X semantics)          transformers Adafactor
  learning_rate 0.3, constant          lr=0.3, relative_step=False, warmup_init=False
  multiply_by_parameter_scale False    scale_parameter=False
  decay_rate 0.8: 1 - (t+1)^-0.8       decay_rate=-0.8: 1 - t^-0.8, t from 1 (same)
  clipping_threshold 1.0               clip_threshold=1.0
  epsilon1 1e-30                       eps=(1e-30, 1e-3)
  no momentum                          beta1=None
  weight_decay_rate 1e-5, decoupled:   weight_decay=1e-5 / 0.3: transformers
    p -= 1e-5 * p                        multiplies it by lr, p -= wd * lr * p
  unfactored (factored=False)          factored (any 2-D parameter): the [P, H]
                                         prompt keeps row + column statistics; the
                                         cost difference is O(P * H), negligible
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict

import numpy as np
import peft
import torch
import transformers

from benchmarks import common, weights

LEARNING_RATE = 0.3
WEIGHT_DECAY = 1e-5  # decoupled, as in T5X; see the mapping above


def threads() -> int:
  """Intra-op threads: every core this process may use (as XLA's CPU backend)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
      os.cpu_count() or 1)


def load_peft_model(directory: str, prompt_length: int):
  """The PEFT prompt-tuning wrapper around the shared weights and prompt."""
  model = transformers.T5ForConditionalGeneration.from_pretrained(
      os.path.join(directory, weights.MODEL_DIR))
  model.config.use_cache = False
  config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM,
                                   num_virtual_tokens=prompt_length)
  model = peft.get_peft_model(model, config)
  prompt = np.load(os.path.join(directory, weights.PROMPT_FILE))
  # For encoder-decoder models PEFT allocates P rows per transformer submodule
  # ([2P, H]) but prompt tuning feeds only the first P to the encoder.
  embedding = model.prompt_encoder["default"].embedding.weight
  if tuple(embedding.shape[1:]) != prompt.shape[1:] or embedding.shape[0] < len(prompt):
    raise ValueError(f"PEFT prompt embedding {tuple(embedding.shape)} cannot hold the "
                     f"shared prompt {prompt.shape}.")
  with torch.no_grad():
    embedding[:len(prompt)].copy_(torch.from_numpy(prompt))
  return model


def adafactor(parameters) -> torch.optim.Optimizer:
  """transformers' Adafactor with our prompt-tuning update (see the module doc)."""
  return transformers.optimization.Adafactor(
      parameters, lr=LEARNING_RATE, eps=(1e-30, 1e-3), clip_threshold=1.0,
      decay_rate=-0.8, beta1=None, weight_decay=WEIGHT_DECAY / LEARNING_RATE,
      scale_parameter=False, relative_step=False, warmup_init=False)


class PeftTrain:
  """PEFT prompt tuning of T5ForConditionalGeneration: one optimizer step per call."""

  def __init__(self, shapes: Dict[str, Any], directory: str, dropout: bool = True):
    self.shapes = common.Shapes.from_dict(shapes)
    self.directory = directory
    self.dropout = dropout
    torch.set_num_threads(threads())
    self.baseline_mib = common.rss_mib()

  def setup(self) -> Dict[str, Any]:
    shapes = self.shapes
    torch.manual_seed(0)
    self.model = load_peft_model(self.directory, shapes.prompt)
    self.model.train(self.dropout)
    trainable = [p for p in self.model.parameters() if p.requires_grad]
    self.optimizer = adafactor(trainable)
    vocab = self.model.config.vocab_size
    batch = weights.batch(shapes, vocab)
    self.inputs = {
        "input_ids": torch.from_numpy(batch["encoder_input_tokens"]).long(),
        "attention_mask": torch.ones(batch["encoder_input_tokens"].shape,
                                     dtype=torch.long),
        "labels": torch.from_numpy(batch["decoder_target_tokens"]).long(),
    }
    loaded = common.rss_mib() - self.baseline_mib
    start = time.perf_counter()
    self.first_loss = self._step()
    first = time.perf_counter() - start
    common.reset_peak_rss()
    return {"compile_seconds": 0.0, "first_step_seconds": first, "loaded_mib": loaded,
            "num_trainable": sum(p.numel() for p in trainable),
            "threads": torch.get_num_threads(), "baseline_mib": self.baseline_mib}

  def _step(self) -> float:
    loss = self.model(**self.inputs).loss
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())

  def rep(self) -> Dict[str, Any]:
    start = time.perf_counter()
    for _ in range(self.shapes.steps):
      loss = self._step()
    seconds = (time.perf_counter() - start) / self.shapes.steps
    if not np.isfinite(loss):
      raise FloatingPointError(f"non-finite loss {loss}")
    return {"seconds": seconds, "loss": loss}

  def finish(self) -> Dict[str, Any]:
    return {"peak_mib": common.lifetime_peak_rss_mib() - self.baseline_mib,
            "steady_peak_mib": common.peak_rss_mib() - self.baseline_mib,
            "first_loss": self.first_loss}
