"""What every parameter-efficient method tells the rest of the system.

A `Method` is plain data: which modules it hooks into the frozen T5 (see the hooks
described in `prompt_tuning/models/t5.py`), which parameter paths it trains, how its
parameters are initialized from the frozen model, and what it exports after training.
The trainer, the checkpointer and the entry points only talk to this interface.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import numpy as np

from prompt_tuning.models import families, scan
from prompt_tuning.models.config import T5Config
from prompt_tuning.params import Params, flatten, matches, unflatten

@dataclasses.dataclass(frozen=True)
class Method:
  """A tuning method: hooks into the frozen model plus what it trains.

  Attributes:
    name: short name used in logs and `MODEL_DIR/config.json` (`prompt`, `prefix`,
      `lopa`, `model`, `design`).
    prompt: module for the encoder-input hook (lives at `encoder/prompt/…`).
    prefix: module for the per-layer key/value hook (lives at `prefix/…`).
    adapter: a method interceptor for the `adapter` hook of `Transformer` (LoRA,
      IA3, per-layer prompts; its parameters live under the adapted modules).
    trainable: regexes over `/`-joined parameter paths; everything else is frozen
      (no gradient, no optimizer state).
    initialize: optional `(rng, params, config) -> params` run once after loading
      the frozen model, e.g. to fill the prompt from vocabulary embeddings.
    export: optional `(params) -> {name: np.ndarray}` of what to save as numpy
      after training (e.g. the `[P, H]` prompt, or folded prefixes). Defaults to the
      trainable parameters by path.
    inference: optional `() -> Method` giving the method used at inference time
      (e.g. prefix tuning without its reparametrization MLP); defaults to itself.
    fold: optional `(params) -> params` turning trained parameters into those of
      `inference()` (e.g. evaluating the prefix MLP once); defaults to identity.
  """
  name: str
  prompt: Optional[nn.Module] = None
  prefix: Optional[nn.Module] = None
  adapter: Optional[Callable[..., Any]] = None
  trainable: Tuple[str, ...] = ()
  initialize: Optional[Callable[[jax.Array, Params, T5Config], Params]] = None
  export: Optional[Callable[[Params], Dict[str, np.ndarray]]] = None
  inference: Optional[Callable[[], "Method"]] = None
  fold: Optional[Callable[[Params], Params]] = None

  def build(self, config: families.ModelConfig) -> nn.Module:
    """The Flax module for this method on the frozen model of `config`; the family
    (T5, GPT-2, Llama) is the type of the config (`models.families`)."""
    return families.build(config, prompt=self.prompt, prefix=self.prefix,
                          adapter=self.adapter)

  def is_trainable(self, path: str) -> bool:
    return matches(path, self.trainable)

  def trainable_mask(self, params: Params) -> Params:
    """A tree of bools, True where the parameter is trained."""
    return unflatten({k: self.is_trainable(k) for k in flatten(params)})

  def inference_method(self) -> "Method":
    """The method to decode with (after `fold`); this method when not given."""
    return self.inference() if self.inference is not None else self

  def inference_params(self, params: Params) -> Params:
    """Trained parameters → parameters of `inference_method()`."""
    return self.fold(params) if self.fold is not None else params

  def exported(self, params: Params) -> Dict[str, np.ndarray]:
    """What to write as `.npy` files after training (name → array)."""
    if self.export is not None:
      return self.export(params)
    trained = {k: v for k, v in flatten(params).items() if self.is_trainable(k)}
    # A scanned model's stacked layers export under the T5X layer paths.
    return {k.replace("/", "."): np.asarray(v) for k, v in scan.unstack(trained).items()}
