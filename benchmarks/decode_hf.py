"""Hugging Face greedy decoding as a worker contender: PEFT prompt tuning + `generate`.

The PEFT-wrapped `T5ForConditionalGeneration` of `train_peft.py` (same weights,
same prompt) in eval mode, `generate(do_sample=False, num_beams=1,
max_new_tokens=L)` under `torch.inference_mode()`, with the key/value cache on
(transformers' default) and no EOS (`generation_config.eos_token_id = None`), so
exactly B * L tokens are generated as by ours with `eos_id=-1`. The returned
tokens (decoder start token dropped) let the runner check that both sides decode
the same sequences.
"""
from __future__ import annotations

import time
from typing import Any, Dict

import numpy as np
import torch

from benchmarks import common, weights
from benchmarks.train_peft import load_peft_model, threads


class HfDecode:
  """`PeftModelForSeq2SeqLM.generate`, greedy, one fixed batch per repetition."""

  def __init__(self, shapes: Dict[str, Any], directory: str):
    self.shapes = common.Shapes.from_dict(shapes)
    self.directory = directory
    torch.set_num_threads(threads())

  def setup(self) -> Dict[str, Any]:
    shapes = self.shapes
    self.model = load_peft_model(self.directory, shapes.prompt)
    self.model.eval()
    self.model.base_model.config.use_cache = True
    generation = self.model.base_model.generation_config
    generation.eos_token_id = None
    generation.use_cache = True
    tokens = weights.batch(shapes, self.model.config.vocab_size)["encoder_input_tokens"]
    self.input_ids = torch.from_numpy(tokens).long()
    self.attention_mask = torch.ones_like(self.input_ids)
    start = time.perf_counter()
    out = self._decode()
    first = time.perf_counter() - start
    return {"first_call_seconds": first, "tokens": out.tolist(),
            "threads": torch.get_num_threads()}

  def _decode(self) -> np.ndarray:
    with torch.inference_mode():
      out = self.model.generate(
          input_ids=self.input_ids, attention_mask=self.attention_mask,
          max_new_tokens=self.shapes.decode_length, do_sample=False, num_beams=1)
    return out[:, 1:].numpy()  # drop the decoder start token (0)

  def rep(self) -> Dict[str, Any]:
    start = time.perf_counter()
    out = self._decode()
    seconds = time.perf_counter() - start
    if out.shape != (self.shapes.batch, self.shapes.decode_length):
      raise ValueError(f"generate returned {out.shape}; expected "
                       f"{(self.shapes.batch, self.shapes.decode_length)} (did EOS "
                       "stop it?).")
    return {"seconds": seconds, "tokens_per_second": out.size / seconds}

  def finish(self) -> Dict[str, Any]:
    return {}
