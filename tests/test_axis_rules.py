"""Every parameter of every method has logical axis names, and every name has a rule.

A new parameter without names, or with a name the rule table does not know (which
would silently fall back to replication), fails here.
"""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import partitioning
from prompt_tuning.methods import (bank, baselines, deep_prompt, ia3, lopa, lora, prefix,
                                   prompt)
from prompt_tuning.models import config as config_lib
from prompt_tuning.models.t5 import Transformer

METHODS = {
    "prompt": lambda: prompt.prompt_tuning(length=5),
    "prefix": lambda: prefix.prefix_tuning(length=3, hidden_dim=16),
    "lopa": lambda: lopa.lopa(length=4, rank=2, hidden_dim=8),
    "model": baselines.model_tuning,
    "bank": lambda: bank.bank_method(bank.PromptBank(lengths=(3, 2), names=("a", "b"))),
    "lora": lambda: lora.lora(rank=2, targets=(r".*attention/.*", r".*/mlp/w.*",
                                               r"decoder/logits_dense")),
    "ia3": ia3.ia3,
    "p_tuning_v2": lambda: prefix.p_tuning_v2(length=2, cross_attention=True),
    "prefix_cross": lambda: prefix.prefix_tuning(length=2, hidden_dim=8,
                                                 cross_attention=True),
    "per_layer_prompt": lambda: deep_prompt.per_layer_prompt(length=2, mode="add"),
    "bitfit": baselines.partial_tuning,
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_all_parameters_named_and_ruled(name):
  method = METHODS[name]()
  cfg = config_lib.preset("tiny").replace(vocab_size=64, num_encoder_layers=1,
                                          num_decoder_layers=1)
  model = method.build(cfg)
  tokens = jnp.ones((2, 4), jnp.int32)
  kwargs = {"prompt_index": jnp.zeros((2,), jnp.int32)} if name == "bank" else {}
  abstract = jax.eval_shape(lambda r: model.init(r, tokens, tokens, **kwargs),
                            jax.random.PRNGKey(0))["params"]
  known = {logical for logical, _ in partitioning.LOGICAL_AXIS_RULES}
  flat = flax.traverse_util.flatten_dict(abstract, sep="/")
  frozen = flax.traverse_util.flatten_dict(jax.eval_shape(
      lambda r: Transformer(cfg).init(r, tokens, tokens), jax.random.PRNGKey(0))["params"],
                                           sep="/")
  method_paths = [p for p in flat if p not in frozen]
  if name not in ("model", "bitfit"):
    assert method_paths, f"{name} created no method parameters"
  for path, leaf in flat.items():
    assert isinstance(leaf, nn.LogicallyPartitioned), f"{path} has no axis names"
    assert len(leaf.names) == len(leaf.value.shape), path
    unknown = set(leaf.names) - known
    assert not unknown, f"{path}: axis names {sorted(unknown)} have no partitioning rule"
  # The trainable regexes select exactly the method's own parameters.
  trainable = [p for p in flat if method.is_trainable(p)]
  expected = {"model": sorted(flat),
              "bitfit": sorted(p for p in flat if p.endswith("norm/scale"))
              }.get(name, sorted(method_paths))
  if name != "bank":
    assert sorted(trainable) == expected
  assert int(np.sum([np.prod(flat[p].value.shape) for p in trainable])) > 0
