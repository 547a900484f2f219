"""The one switch between the model families on the training side.

An encoder-decoder (T5) and a decoder-only model (GPT-2, Llama family) read
different batches, need a different loss and are decoded from different features;
everything else (the loop, checkpoints, metrics) is shared. `of(model_config)`
returns the family's `ModelIO`, which the train entry point and the `Evaluator` use
for these four things and nothing else:

                     encoder-decoder                 decoder-only
  batches / examples  data.train_batches / …          data_decoder (one sequence)
  loss               losses.LossFn                   losses.CausalLossFn
  decoding input     encoder_input_tokens            decoder_prompt_tokens + mask
  decoder            models.decoding                 models.decoder_decoding

The data modules (seqio, TensorFlow) are imported when first used.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import jax

from prompt_tuning.models import families
from prompt_tuning.training import losses

Batch = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class ModelIO:
  """What depends on the family; `decoder_only` says which one."""
  decoder_only: bool
  bos_id: int = 0

  def loss_fn(self, model: Any, z_loss: float = 1e-4,
              loss_normalizing_factor: losses.Normalizer = losses.NUM_REAL_TARGET_TOKENS,
              enable_dropout: bool = True, telemetry: bool = False) -> losses.LossFn:
    """The family's loss; `telemetry` (LoPA gate statistics) is T5-only so far."""
    if self.decoder_only:
      return losses.CausalLossFn(model, z_loss, loss_normalizing_factor,
                                 enable_dropout)
    return losses.LossFn(model, z_loss, loss_normalizing_factor, enable_dropout,
                         telemetry=telemetry)

  def train_batches(self, mixture_or_task_name: str,
                    task_feature_lengths: Mapping[str, int], batch_size: int,
                    **kwargs) -> Iterator[Batch]:
    """`data.train_batches` / `data_decoder.train_batches` (same keyword args)."""
    if self.decoder_only and kwargs.get("prompt_names") is not None:
      raise ValueError("Multi-task prompts (methods/multitask_prompt_tuning.gin) train "
                       "on encoder-decoder models only so far; on a decoder-only "
                       "model train one prompt per task and serve them as a bank.")
    from prompt_tuning import data_decoder  # pylint: disable=g-import-not-at-top
    return data_decoder.batches(mixture_or_task_name, task_feature_lengths,
                                batch_size, decoder_only=self.decoder_only,
                                bos_id=self.bos_id, **kwargs)

  def eval_examples(self, task: Any, task_feature_lengths: Mapping[str, int],
                    split: str, max_examples: Optional[int], use_cached: bool):
    from prompt_tuning import data_decoder  # pylint: disable=g-import-not-at-top
    return data_decoder.eval_examples_for(
        task, task_feature_lengths, decoder_only=self.decoder_only,
        bos_id=self.bos_id, split=split, max_examples=max_examples,
        use_cached=use_cached)

  def padded_batches(self, features: Sequence[Batch], batch_size: int
                     ) -> Iterator[Batch]:
    """Eval batches; the last is padded with rows whose loss weights are zero."""
    if self.decoder_only:
      from prompt_tuning import data_decoder  # pylint: disable=g-import-not-at-top
      return data_decoder.padded_batches(features, batch_size)
    from prompt_tuning import data  # pylint: disable=g-import-not-at-top
    return data.padded_batches(features, batch_size)

  def decode(self, decode_fn: Optional[Callable[..., Any]], model: Any, params: Any,
             batch: Batch, max_decode_length: int, eos_id: int,
             prompt_index: Optional[jax.Array] = None) -> jax.Array:
    """Generated ids `[B, L]` of an eval batch (a `(tokens, scores)` result is
    reduced to its tokens).

    `decode_fn(model, params, tokens, max_decode_length=L, ...)` defaults to the
    family's `greedy_decode`. A decoder-only model is fed its prompt tokens (the
    input, left-padded) with their mask and the task vocabulary's EOS; a decoder
    made for the other family is refused (`decoder_decode_fn` maps the configured
    ones). `prompt_index [B]` routes each row to its prompt of a bank.
    """
    routed = {} if prompt_index is None else {"prompt_index": prompt_index}
    if self.decoder_only:
      from prompt_tuning.models import decoder_decoding  # pylint: disable=g-import-not-at-top
      decode_fn = decode_fn or decoder_decoding.greedy_decode
      check_decoder_only_decode_fn(decode_fn)
      out = decode_fn(model, params, batch["decoder_prompt_tokens"],
                      max_decode_length=max_decode_length,
                      attention_mask=batch["decoder_prompt_mask"], eos_id=eos_id,
                      **routed)
    else:
      if decode_fn is None:
        from prompt_tuning.models import decoding  # pylint: disable=g-import-not-at-top
        decode_fn = decoding.greedy_decode
      out = decode_fn(model, params, batch["encoder_input_tokens"],
                      max_decode_length=max_decode_length, **routed)
    return out[0] if isinstance(out, tuple) else out


def check_decoder_only_decode_fn(decode_fn: Callable[..., Any]) -> None:
  """Refuses a T5 decoder (`models.decoding.*`) for a decoder-only model."""
  target = getattr(decode_fn, "func", decode_fn)  # functools.partial
  target = getattr(target, "__wrapped__", target)
  if getattr(target, "__module__", "") == "prompt_tuning.models.decoding":
    raise ValueError(
        f"DECODE_FN {getattr(target, '__name__', target)!r} decodes T5 models; a "
        "decoder-only model needs prompt_tuning.models.decoder_decoding's decoder of "
        "the same name (the entry points map configs/decoding/*.gin to it).")


def of(model_config: Any) -> ModelIO:
  """The `ModelIO` of a model config's family."""
  decoder_only = families.is_decoder_only(model_config)
  bos = int(getattr(model_config, "bos_token_id", 0) or 0) if decoder_only else 0
  return ModelIO(decoder_only=decoder_only, bos_id=bos)


def of_model(model: Any) -> ModelIO:
  """The `ModelIO` of a built network (its `config` attribute)."""
  return of(getattr(model, "config", None))
