"""Multi-task prompt tuning: K task prompts trained together in one run.

One frozen model, one run, K tasks: example b is routed to its task's prompt by
`prompt_index [B]` (carried in the batch, see `prompt_tuning/data.py`), a gather
inside the compiled step, exactly as a served `PromptBank` does. Optionally a
prompt shared by every task is combined with each task's own prompt, as the
official code's multi-task prompts do:

  shared='none'    prompt_k = task_k                     [P_t, H]
  shared='add'     prompt_k = shared + task_k            [P, H]   (P_s = P_t = P)
  shared='concat'  prompt_k = [shared, task_k]           [P_s + P_t, H]

Parameters (T5X paths, logical axes):
  encoder/prompt/prompts        [K, P_t, H]  ('prompts', 'prompt', 'embed')
  encoder/prompt/shared_prompt  [P_s, H]     ('prompt', 'embed')   (add / concat)

With shared='none' the parameters are those of a `PromptBank` of K same-length
prompts, so a trained run is served as it is; with a shared prompt,
`inference_method()` is the shared='none' method of the composed length and
`inference_params` folds the shared prompt into the rows (what eval loads from an
export). Whatever the mode, the run exports
the composed bank `encoder.prompt.prompts.npy` `[K, P, H]` (row k is what task k
sees), which `prompt_tuning.infer` serves by task name.

Task names come from the entry point (the members of the seqio mixture); this
module knows nothing of tasks.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.methods import bank as bank_lib
from prompt_tuning.methods import initializers as inits
from prompt_tuning.methods import prompt as prompt_lib
from prompt_tuning.methods.base import Method
from prompt_tuning.models import families
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.layers import param
from prompt_tuning.params import Params, get_param, with_params, without_params

Array = jax.Array
NAME = "multitask_prompt"
SHARED_MODES = ("none", "add", "concat")
TASKS_PATH = bank_lib.PROMPTS_PATH  # encoder/prompt/prompts, as a served bank
SHARED_PATH = "encoder/prompt/shared_prompt"
EXPORT_NAME = TASKS_PATH.replace("/", ".")  # encoder.prompt.prompts


def compose(shared_mode: str, tasks: Array, shared: Optional[Array]) -> Array:
  """Task prompts `[..., P_t, H]` (+ shared `[P_s, H]`) → the prompts tasks see.

  'none': tasks; 'add': shared + tasks; 'concat': [shared, tasks] along positions.
  """
  if shared_mode == "none":
    return tasks
  shared = jnp.broadcast_to(shared.astype(tasks.dtype),
                            tasks.shape[:-2] + shared.shape)
  if shared_mode == "add":
    return shared + tasks
  return jnp.concatenate([shared, tasks], axis=-2)


class MultiTaskPrompt(nn.Module):
  """K task prompts (+ an optional shared one), one chosen per example.

  Attributes:
    names: one name per task (the bank rows, in `prompt_index` order).
    length: P_t, positions of each task prompt.
    shared: 'none' | 'add' | 'concat' (module docstring).
    shared_length: P_s (default P_t; 'add' needs P_s = P_t).
    combine: where the prompt goes ('prefix', 'suffix', 'after_bos').
    init_minval / init_maxval: uniform range of `Module.init`; the method's
      initializer then fills the values.
  """
  names: Tuple[str, ...]
  length: int
  shared: str = "none"
  shared_length: Optional[int] = None
  combine: str = "prefix"
  init_minval: float = -0.5
  init_maxval: float = 0.5

  needs_encoder_features = False

  def __post_init__(self):
    names = tuple(self.names)
    if not names or len(set(names)) != len(names):
      raise ValueError(f"A multi-task prompt needs one distinct name per task; got "
                       f"{list(names)}.")
    if self.length < 1:
      raise ValueError(f"Task prompt length must be >= 1; got {self.length}.")
    if self.shared not in SHARED_MODES:
      raise ValueError(f"Unknown shared-prompt mode {self.shared!r}; choose one of "
                       f"{list(SHARED_MODES)} (gin: methods.multitask_prompt_tuning."
                       "shared).")
    shared_length = self.length if self.shared_length is None else self.shared_length
    if self.shared == "add" and shared_length != self.length:
      raise ValueError(f"shared='add' sums the shared and task prompts, so they need "
                       f"one length; got shared_length {shared_length} and length "
                       f"{self.length}.")
    if self.shared != "none" and shared_length < 1:
      raise ValueError(f"shared_length must be >= 1; got {shared_length}.")
    prompt_lib.check_combine(self.combine)
    object.__setattr__(self, "names", names)
    object.__setattr__(self, "shared_length", shared_length)
    super().__post_init__()

  @property
  def num_prompts(self) -> int:
    return len(self.names)

  @property
  def total_length(self) -> int:
    """P, the length of the prompt each task sees."""
    return self.length + (self.shared_length if self.shared == "concat" else 0)

  def index(self, name: str) -> int:
    if name not in self.names:
      raise KeyError(f"No task named {name!r}; tasks: {list(self.names)}.")
    return self.names.index(name)

  def _uniform(self, rng, shape, dtype):
    return jax.random.uniform(rng, shape, dtype, self.init_minval, self.init_maxval)

  @nn.compact
  def __call__(self, x: Array, mask: Array, features: Optional[Array] = None,
               prompt_index: Optional[Array] = None,
               deterministic: bool = True) -> Tuple[Array, Array]:
    """x [B, T, H], mask [B, T], prompt_index [B] → ([B, P+T, H], [B, P+T])."""
    del features, deterministic
    batch, _, width = x.shape
    tasks = param(self, "prompts", self._uniform, (self.num_prompts, self.length, width),
                  ("prompts", "prompt", "embed"))
    shared = None
    if self.shared != "none":
      shared = param(self, "shared_prompt", self._uniform, (self.shared_length, width),
                     ("prompt", "embed"))
    if prompt_index is None:
      if self.num_prompts > 1 and not self.is_initializing():
        raise ValueError(f"This multi-task prompt holds {self.num_prompts} task "
                         f"prompts {list(self.names)}: the batch needs "
                         "`prompt_index [B]` (data.train_batches(prompt_names=...) "
                         "adds it).")
      prompt_index = jnp.zeros((batch,), jnp.int32)
    bank_lib._check_index(prompt_index, batch, self.num_prompts)  # pylint: disable=protected-access
    chosen = compose(self.shared, jnp.take(tasks, prompt_index, axis=0), shared)
    return prompt_lib.combine(self.combine, chosen, x, mask)


InitializerSpec = Union[None, inits.Initializer, Sequence[inits.Initializer]]


def multitask_prompt_tuning(names: Sequence[str], length: int = 100,
                            initializer: InitializerSpec = None,
                            shared: str = "none",
                            shared_length: Optional[int] = None,
                            combine: str = "prefix") -> Method:
  """Trains K task prompts (and a shared one) of `encoder/prompt/…` jointly.

  Args:
    names: the task names, in `prompt_index` order (entry points take them from
      the mixture).
    length: P_t, each task prompt's length.
    initializer: one initializer for every task prompt (each gets its own key), or
      one per task (e.g. class labels of each task). Default U[-0.5, 0.5]. With
      shared='add' the task parts start at zero and the shared prompt takes the
      (first) initializer, so each task starts from the initializer's prompt; with
      'concat' the shared prompt takes the first initializer too.
    shared: 'none', 'add' or 'concat' (module docstring).
    shared_length: P_s (default `length`).
    combine: where the prompt goes: 'prefix', 'after_bos' or 'suffix'.
  """
  module = MultiTaskPrompt(names=tuple(names), length=length, shared=shared,
                           shared_length=shared_length, combine=combine)
  count = module.num_prompts
  if initializer is None or callable(initializer):
    per_task = [initializer or inits.random_uniform()] * count
  else:
    per_task = list(initializer)
    if len(per_task) != count:
      raise ValueError(f"multitask_prompt_tuning got {len(per_task)} initializers for "
                       f"{count} tasks {list(module.names)}; give one, or one per task.")

  def initialize(rng: Array, params: Params, config: T5Config) -> Params:
    embedding = get_param(params, families.embedding_path(config))
    keys = jax.random.split(rng, count + 1)
    values = {}
    if shared == "add":
      tasks = jnp.zeros((count, length, config.emb_dim), jnp.float32)
    else:
      tasks = jnp.stack([fn(k, (length, config.emb_dim), embedding)
                         for fn, k in zip(per_task, keys[1:])]).astype(jnp.float32)
    values[TASKS_PATH] = tasks
    if shared != "none":
      values[SHARED_PATH] = per_task[0](keys[0], (module.shared_length, config.emb_dim),
                                        embedding).astype(jnp.float32)
    return with_params(params, values)

  def export(params: Params) -> Dict[str, np.ndarray]:
    return {EXPORT_NAME: composed_bank(params, shared)}

  def inference() -> Method:  # the exported bank alone: the shared part folded in
    return multitask_prompt_tuning(module.names, module.total_length, combine=combine)

  def fold(params: Params) -> Params:
    return with_params(without_params(params, SHARED_PATH),
                       {TASKS_PATH: jnp.asarray(composed_bank(params, shared))})

  folded = shared != "none"
  return Method(name=NAME, prompt=module, trainable=(r"encoder/prompt/.*",),
                initialize=initialize, export=export,
                inference=inference if folded else None,
                fold=fold if folded else None)


def composed_bank(params: Params, shared: str = "none") -> np.ndarray:
  """The `[K, P, H]` prompts the tasks see, from trained parameters."""
  tasks = np.asarray(get_param(params, TASKS_PATH), np.float32)
  if shared == "none":
    return tasks
  return np.asarray(compose(shared, jnp.asarray(tasks),
                            jnp.asarray(get_param(params, SHARED_PATH), jnp.float32)))


def task_names(method: Method) -> Optional[Tuple[str, ...]]:
  """The task names of a multi-task method (None for every other method)."""
  if isinstance(method.prompt, MultiTaskPrompt):
    return method.prompt.names
  return None


def task_rows(method: Method) -> Optional[Dict[str, int]]:
  """task name → `prompt_index` row of a multi-task method (None otherwise)."""
  names = task_names(method)
  return None if names is None else {name: k for k, name in enumerate(names)}
