"""Our greedy decoding as a worker contender, single prompt or a mixed prompt bank.

`prompt_tuning.decoding.greedy_decode` (encoder once, cached decoder steps in one
jitted `while_loop`) on the shared weights, B examples of T_in tokens, L generated
tokens each. EOS never stops a sequence (`eos_id=-1`), so every contender writes
exactly B * L tokens and the random-weight model's outputs cannot end early.

Modes:
  prompt  prompt tuning: the shared `[P, H]` prompt for every example
  bank    a `PromptBank` of K `[P, H]` prompts, example b using prompt b mod K
          (every batch mixes tasks); same shapes as `prompt`
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict

import jax
import numpy as np

from benchmarks import common, weights
from prompt_tuning import decoding, initial_params
from prompt_tuning.methods import bank as bank_lib
from prompt_tuning.methods import initializers
from prompt_tuning.methods import prompt as prompt_lib


class OursDecode:
  """Greedy decoding of one fixed batch per repetition."""

  def __init__(self, shapes: Dict[str, Any], directory: str, mode: str = "prompt"):
    if mode not in ("prompt", "bank"):
      raise ValueError(f"Unknown decoding mode {mode!r}; choose 'prompt' or 'bank'.")
    self.shapes = common.Shapes.from_dict(shapes)
    self.directory = directory
    self.mode = mode

  def setup(self) -> Dict[str, Any]:
    shapes = self.shapes
    method = prompt_lib.prompt_tuning(
        length=shapes.prompt, initializer=initializers.from_file(
            os.path.join(self.directory, weights.PROMPT_FILE)))
    config, params, _ = initial_params.build_params(
        method, shapes.model_config(), os.path.join(self.directory, weights.MODEL_DIR),
        jax.random.PRNGKey(0))
    tokens = weights.batch(shapes, config.vocab_size)["encoder_input_tokens"]
    self.prompt_index = None
    if self.mode == "bank":
      prompts = np.load(os.path.join(self.directory, weights.BANK_FILE))
      bank, bank_params = bank_lib.from_prompts(list(prompts))
      params = bank_lib.with_bank(params, bank_params)
      model = bank_lib.bank_method(bank).build(config)
      self.prompt_index = jax.device_put(
          np.arange(shapes.batch, dtype=np.int32) % bank.num_prompts)
    else:
      model = method.build(config)
    self.model = model
    self.params = jax.device_put(params)
    self.tokens = jax.device_put(tokens)
    start = time.perf_counter()
    out = self._decode()
    first = time.perf_counter() - start
    return {"first_call_seconds": first, "tokens": np.asarray(out).tolist()}

  def _decode(self):
    out = decoding.greedy_decode(self.model, self.params, self.tokens,
                                 max_decode_length=self.shapes.decode_length,
                                 eos_id=-1, prompt_index=self.prompt_index)
    return jax.block_until_ready(out)

  def rep(self) -> Dict[str, Any]:
    start = time.perf_counter()
    out = self._decode()
    seconds = time.perf_counter() - start
    generated = int(np.prod(out.shape))
    return {"seconds": seconds, "tokens_per_second": generated / seconds}

  def finish(self) -> Dict[str, Any]:
    return {}
