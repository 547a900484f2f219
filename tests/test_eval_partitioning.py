"""Eval and infer trace the model inside the same activation-partitioning context as
training (`partitioning.activation_partitioning(mesh, rules)`), so `constrain` shards
their activations by the one rule table; without a mesh, nothing is entered.

The context is read where the model is traced: in the eval step (the Evaluator's
fresh jit traces on its first call) and in the decode function the server calls.
"""
import flax.linen as nn
import jax
import numpy as np

import trainer_testlib as tl
from prompt_tuning import partitioning
from prompt_tuning.inference import serving
from prompt_tuning.methods import bank as bank_lib
from prompt_tuning.models import decoding, sharding
from prompt_tuning.models.t5 import Transformer
from prompt_tuning.training import evaluation

RULES = partitioning.rules(activation_partitioning_dims=2)


def _context():
  return getattr(sharding._context, "value", None)  # pylint: disable=protected-access


def _mesh():
  return partitioning.make_mesh(1, devices=jax.devices()[:1])


def test_evaluator_traces_its_step_and_decodes_under_the_rules(monkeypatch):
  name = tl.register_task()
  model = Transformer(tl.tiny_config(dropout_rate=0.0))
  tokens = np.ones((1, 4), np.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), tokens, tokens)["params"])
  seen = {"step": [], "decode": []}
  original = evaluation.eval_step

  def spy_step(*args, **kwargs):
    seen["step"].append(_context())
    return original(*args, **kwargs)

  def spy_decode(*args, **kwargs):
    seen["decode"].append(_context())
    return decoding.greedy_decode(*args, **kwargs)

  monkeypatch.setattr(evaluation, "eval_step", spy_step)
  for mesh, rules, want in ((_mesh(), RULES, tuple(RULES)), (None, RULES, None)):
    seen = {"step": [], "decode": []}
    evaluator = evaluation.Evaluator(model, mesh, None, name, tl.FEATURE_LENGTHS,
                                     batch_size=4, max_examples=4, axis_rules=rules,
                                     decode_fn=spy_decode)
    if mesh is not None:  # shardings of the parameters on the mesh
      evaluator.param_shardings = jax.tree_util.tree_map(
          lambda _: partitioning.replicated(mesh), params)
    evaluator.evaluate(params)
    assert seen["step"] and seen["decode"]
    for value in seen["step"] + seen["decode"]:
      if want is None:
        assert value is None
      else:
        assert value[0] is mesh and value[1] == want
  assert _context() is None  # left on exit


def test_prompt_server_decodes_and_ranks_under_the_rules():
  config = tl.tiny_config(dropout_rate=0.0)
  rng = np.random.default_rng(0)
  bank, bank_params = bank_lib.from_prompts(
      {"a": rng.normal(size=(2, config.emb_dim)).astype(np.float32)})
  frozen = Transformer(config)
  tokens = np.ones((1, 4), np.int32)
  params = nn.unbox(frozen.init(jax.random.PRNGKey(0), tokens, tokens)["params"])
  model = Transformer(config, prompt=bank)
  seen = []

  def spy_decode(*args, **kwargs):
    seen.append(_context())
    return decoding.greedy_decode(*args, **kwargs)

  class Bytes:
    eos_id = 1
    def encode(self, text):
      return [3 + b for b in text.encode()]
    def decode(self, ids):
      return " ".join(map(str, ids))

  mesh = _mesh()
  server = serving.PromptServer(
      model, bank_lib.with_bank(params, bank_params), bank, Bytes(),
      routes=serving.make_routes(bank, None, None), input_length=8,
      max_decode_length=2, batch_size=2, decode_fn=spy_decode, mesh=mesh,
      axis_rules=RULES)
  from prompt_tuning.inference.io import Request  # pylint: disable=g-import-not-at-top
  records = list(server.serve([Request(line=1, prompt="a", inputs="hi")]))
  assert len(records) == 1 and "prediction" in records[0]
  assert seen and all(v[0] is mesh and v[1] == tuple(RULES) for v in seen)
  assert _context() is None
