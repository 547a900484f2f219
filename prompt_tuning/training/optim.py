"""Which parameters train, and the optimizers of each method's paper.

Trainable parameters are chosen by regexes over `/`-joined parameter paths
(`Method.trainable` by default, T5X `re.fullmatch` semantics). Training works on the
two subtrees from `prompt_tuning.params`:

  trainable, frozen = params.split(tree, regexes)  # frozen: no grads, no opt state
  opt_state = optimizer.init(trainable)
  grads = jax.grad(lambda t: loss(params.merge(t, frozen)))(trainable)
  trainable, opt_state = apply_gradients(optimizer, grads, opt_state, trainable)

so the frozen model costs no weight-gradient matmuls and no optimizer memory.

Optimizers (optax GradientTransformations; every argument overridable by gin):
  adafactor_prompt_tuning  the prompt-tuning paper: Adafactor, constant lr 0.3,
                           decay rate 0.8, no parameter scaling, weight decay 1e-5,
                           update clipping 1.0, unfactored second moments
  adafactor_model_tuning   T5X fine-tuning default: Adafactor, constant lr 1e-3,
                           parameter scaling, factored
  adamw_prefix_tuning      Li & Liang: AdamW lr 5e-5, linear warmup then linear decay
  adamw_lopa               Jain et al.: AdamW lr 1e-3, linear decay, no weight decay
  frozen                   no updates (prompt design)

optax.adafactor vs T5X's `adafactor.Adafactor` (checked in tests/test_optim.py
against a transcription of T5X's update rule):
  * Same: second-moment decay `1 - (t+1)^-0.8`, epsilon1 = 1e-30 added to g²,
    update clipping by the RMS over the whole parameter, decoupled weight decay
    `(1 - wd) * param - lr * update` (not multiplied by the learning rate),
    parameter scaling with a 1e-3 floor.
  * Step counter: T5X keeps counting from the loaded checkpoint's step (1,100,000 for
    the LM-adapted T5.1.1 checkpoints), so its decay starts near 1; optax counts from
    0 for the new state. `checkpoint_step=1_100_000` reproduces T5X exactly.
  * Factoring: T5X chooses it from logical axis names (the prompt-tuning rules leave
    the prompt unfactored); optax by shape (both dims >= `min_dim_size_to_factor`).
    The prompt-tuning optimizer therefore sets `factored=False` (a P=150 prompt
    would otherwise be factored).
  * Not offered: T5X's `weight_decay_rate_lr_exponent`, `skip_nan_updates`,
    `global_norm_clip_threshold` (add `optax.clip_by_global_norm` in front if needed).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import jax
import optax

from prompt_tuning.methods.base import Method

Tree = Dict[str, Any]


# ---------------------------------------------------------------- trainable subtree


def trainable_regexes(method: Method, regexes: Optional[Sequence[str]] = None
                      ) -> Tuple[str, ...]:
  """`regexes` when given (gin: `optim.trainable_regexes.regexes`), else the method's."""
  if regexes is None:
    return tuple(method.trainable)
  if isinstance(regexes, str):
    raise ValueError(f"trainable regexes must be a list, got the string {regexes!r}; "
                     f"write e.g. ['{regexes}'].")
  return tuple(regexes)


def apply_gradients(optimizer: optax.GradientTransformation, grads: Tree,
                    opt_state: Any, trainable: Tree) -> Tuple[Tree, Any]:
  """One optimizer step on the trainable subtree → (new trainable, new state)."""
  updates, opt_state = optimizer.update(grads, opt_state, trainable)
  return optax.apply_updates(trainable, updates), opt_state


def num_elements(tree: Any) -> int:
  """Total number of array elements in a pytree (e.g. an optimizer state)."""
  return sum(int(x.size) for x in jax.tree.leaves(tree) if hasattr(x, "size"))


# ---------------------------------------------------------------- schedules


def linear_schedule(learning_rate: float, warmup_steps: int = 0,
                    total_steps: Optional[int] = None) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps`, then linear decay to 0 at
  `total_steps` (constant after warmup when `total_steps` is None)."""
  warmup = optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
  if total_steps is None:
    after = optax.constant_schedule(learning_rate)
  else:
    if total_steps <= warmup_steps:
      raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps "
                       f"({warmup_steps}).")
    after = optax.linear_schedule(learning_rate, 0.0, total_steps - warmup_steps)
  if warmup_steps <= 0:
    return after
  return optax.join_schedules([warmup, after], [warmup_steps])


# ---------------------------------------------------------------- optimizers


def adafactor(learning_rate: Union[float, optax.Schedule] = 1e-3,
              decay_rate: float = 0.8,
              checkpoint_step: int = 0,
              multiply_by_parameter_scale: bool = True,
              clipping_threshold: Optional[float] = 1.0,
              weight_decay_rate: Optional[float] = None,
              factored: bool = True,
              min_dim_size_to_factor: int = 128,
              momentum: Optional[float] = None,
              epsilon: float = 1e-30) -> optax.GradientTransformation:
  """Adafactor with T5X semantics (see the module docstring for the differences).

  Args:
    checkpoint_step: the step the T5X step counter would start from (the loaded
      checkpoint's step); enters the second-moment decay `1 - (step+1)^-decay_rate`.
  """
  return optax.adafactor(
      learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate, decay_offset=-checkpoint_step,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=momentum,
      weight_decay_rate=weight_decay_rate, eps=epsilon, factored=factored)


def adafactor_prompt_tuning(learning_rate: Union[float, optax.Schedule] = 0.3,
                            decay_rate: float = 0.8,
                            weight_decay_rate: Optional[float] = 1e-5,
                            clipping_threshold: Optional[float] = 1.0,
                            checkpoint_step: int = 0,
                            factored: bool = False) -> optax.GradientTransformation:
  """The prompt-tuning paper's optimizer (Lester et al., 2021; T5X gin defaults)."""
  return adafactor(learning_rate, decay_rate=decay_rate, checkpoint_step=checkpoint_step,
                   multiply_by_parameter_scale=False,
                   clipping_threshold=clipping_threshold,
                   weight_decay_rate=weight_decay_rate, factored=factored)


def adafactor_model_tuning(learning_rate: Union[float, optax.Schedule] = 1e-3,
                           decay_rate: float = 0.8,
                           checkpoint_step: int = 0) -> optax.GradientTransformation:
  """T5X's fine-tuning default (the paper's model-tuning baseline)."""
  return adafactor(learning_rate, decay_rate=decay_rate, checkpoint_step=checkpoint_step,
                   multiply_by_parameter_scale=True, factored=True)


def adamw(learning_rate: float = 1e-3, warmup_steps: int = 0,
          total_steps: Optional[int] = None, weight_decay: float = 0.0,
          b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          max_grad_norm: Optional[float] = None) -> optax.GradientTransformation:
  """AdamW with linear warmup/decay (`linear_schedule`); optional global-norm clip."""
  tx = optax.adamw(linear_schedule(learning_rate, warmup_steps, total_steps),
                   b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  if max_grad_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)
  return tx


def adamw_prefix_tuning(learning_rate: float = 5e-5, warmup_steps: int = 0,
                        total_steps: Optional[int] = None,
                        weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Li & Liang (2021): AdamW, lr 5e-5, linear schedule (bind `total_steps` to decay)."""
  return adamw(learning_rate, warmup_steps, total_steps, weight_decay)


def adamw_lopa(learning_rate: float = 1e-3, warmup_steps: int = 0,
               total_steps: Optional[int] = None,
               weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Jain et al. (2024), reference code defaults: AdamW lr 1e-3, linear schedule."""
  return adamw(learning_rate, warmup_steps, total_steps, weight_decay)


def frozen() -> optax.GradientTransformation:
  """No updates and no state: for prompt design (nothing is trained)."""
  return optax.set_to_zero()
