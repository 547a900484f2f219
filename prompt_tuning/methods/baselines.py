"""The two baselines of the prompt-tuning paper.

  model_tuning()   every parameter of T5 is trained (no hooks); exports nothing by
                   default, the trainer checkpoints the whole model.
  prompt_design()  nothing is trained: the text prompt is part of the task's input
                   (e.g. a seqio preprocessor prepending "sentiment: "), evaluated
                   with the frozen model.
"""
from __future__ import annotations

from prompt_tuning.methods.base import Method


def model_tuning() -> Method:
  """All parameters trainable (regex `.*`)."""
  return Method(name="model", trainable=(r".*",), export=lambda params: {})


def prompt_design() -> Method:
  """No trainable parameters; the frozen model reads a text prompt in the input."""
  return Method(name="design", trainable=(), export=lambda params: {})
