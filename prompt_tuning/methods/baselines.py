"""The two baselines of the prompt-tuning paper.

  model_tuning()   every parameter of T5 is trained (no hooks); exports nothing by
                   default, the trainer checkpoints the whole model.
  prompt_design()  nothing is trained: the text prompt is part of the task's input
                   (e.g. a seqio preprocessor prepending "sentiment: "), evaluated
                   with the frozen model.

And partial tuning, a subset of the frozen model's own parameters chosen by regexes:

  partial_tuning(regexes)  e.g. BitFit-style tuning (Ben Zaken et al., 2022). T5 1.1
                           has no biases, so `configs/methods/bitfit.gin` trains the
                           RMS norm scales (`LAYER_NORM_REGEXES`), the closest
                           per-feature vectors; exports the trained arrays by path.
"""
from __future__ import annotations

import re
from typing import Sequence

from prompt_tuning.methods.base import Method

# Every RMS norm scale of T5.1.1: pre_{attention,self_attention,cross_attention,mlp}
# layer norms and the final {encoder,decoder}_norm.
LAYER_NORM_REGEXES = (r".*layer_norm/scale", r"(encoder|decoder)/(encoder|decoder)_norm/scale")


def model_tuning() -> Method:
  """All parameters trainable (regex `.*`)."""
  return Method(name="model", trainable=(r".*",), export=lambda params: {})


def prompt_design() -> Method:
  """No trainable parameters; the frozen model reads a text prompt in the input."""
  return Method(name="design", trainable=(), export=lambda params: {})


def partial_tuning(regexes: Sequence[str] = LAYER_NORM_REGEXES,
                   name: str = "partial") -> Method:
  """Trains the frozen model's parameters whose paths fully match `regexes`.

  The exported form is the trained arrays by dotted path (`encoder.layers_0.
  pre_attention_layer_norm.scale.npy`), which eval and infer put back into the
  frozen checkpoint.
  """
  regexes = tuple(regexes)
  if not regexes:
    raise ValueError("partial_tuning needs at least one regex; use prompt_design "
                     "to train nothing.")
  for regex in regexes:
    try:
      re.compile(regex)
    except re.error as e:
      raise ValueError(f"partial_tuning: {regex!r} is not a regex: {e}.") from e
  return Method(name=name, trainable=regexes)
