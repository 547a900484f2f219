"""serving.PromptServer and infer_io: order, error records, one compiled shape,
truncation, ensembles and labels, on a tiny random model with a toy vocabulary."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from prompt_tuning import prompt_files
from prompt_tuning.models import decoding
from prompt_tuning.inference import io as infer_io, ranking, serving
from prompt_tuning import infer as infer_lib
from prompt_tuning.run_dir import train_state as ckpt
from prompt_tuning.methods import bank as bank_lib
from prompt_tuning.params import with_params
from prompt_tuning.methods.prompt import Prompt
from prompt_tuning.models.config import preset
from prompt_tuning.models.t5 import Transformer

VOCAB = 64
CONFIG = preset("tiny", vocab_size=VOCAB, dropout_rate=0.0)
T, L, B = 8, 3, 4


class CharVocab:
  """A toy vocabulary: one id per character (ids 3..63), EOS = 1."""
  eos_id = 1

  def encode(self, text):
    return [3 + ord(c) % (VOCAB - 3) for c in text]

  def decode(self, ids):
    return " ".join(str(i) for i in ids)


@pytest.fixture(scope="module")
def served():
  frozen = Transformer(CONFIG)
  dummy = np.ones((1, 4), np.int32)
  params = nn.meta.unbox(jax.jit(lambda r: frozen.init(r, dummy, dummy)["params"])(
      jax.random.PRNGKey(0)))
  rng = np.random.default_rng(1)
  prompts = {"a": rng.normal(size=(3, CONFIG.emb_dim)).astype(np.float32),
             "b": 2 * rng.normal(size=(3, CONFIG.emb_dim)).astype(np.float32),
             "c": rng.normal(size=(2, CONFIG.emb_dim)).astype(np.float32)}
  bank, bank_params = bank_lib.from_prompts(prompts)
  model = Transformer(CONFIG, prompt=bank)
  return model, bank_lib.with_bank(params, bank_params), bank, params, prompts


def make_server(served, **kwargs):
  model, params, bank, _, _ = served
  routes = serving.make_routes(bank, kwargs.pop("ensembles", None),
                               kwargs.pop("labels", None))
  return serving.PromptServer(model, params, bank, CharVocab(), routes=routes,
                              input_length=T, max_decode_length=L, batch_size=B,
                              **kwargs)


def alone(served, name, text, labels=None):
  """Reference: the example alone (batch of one, 0-padded to T) with its prompt as
  prompt tuning's own single-prompt module."""
  _, _, _, frozen, prompts = served
  model = Transformer(CONFIG, prompt=Prompt(length=prompts[name].shape[0]))
  params = with_params(frozen, {"encoder/prompt": {"prompt": prompts[name]}})
  ids = CharVocab().encode(text)[:T - 1] + [1]
  tokens = np.zeros((1, T), np.int32)
  tokens[0, :len(ids)] = ids
  if labels:
    label_tokens = np.zeros((len(labels), 8), np.int32)
    for k, label in enumerate(labels):
      enc = CharVocab().encode(label) + [1]
      label_tokens[k, :len(enc)] = enc
    return np.asarray(ranking.rank_classify(model, params, tokens, label_tokens)[1][0])
  out = np.asarray(decoding.greedy_decode(model, params, tokens,
                                          max_decode_length=L))[0].tolist()
  return CharVocab().decode(out[:out.index(1)] if 1 in out else out)


def compiled_decoders() -> int:
  """How many programs the greedy decoder has compiled so far."""
  return decoding._greedy_jit._cache_size()  # pylint: disable=protected-access


def requests(pairs):
  return [infer_io.Request(line=i + 1, prompt=p, inputs=x)
          for i, (p, x) in enumerate(pairs)]


def test_mixed_prompts_keep_order_and_match_each_example_alone(served):
  pairs = [("a", "hello"), ("c", "hi"), ("b", "hello"), ("a", "a much longer text"),
           ("c", "x"), ("b", "yes"), ("a", "zz")]  # 7 rows: last batch padded
  server = make_server(served)
  before = compiled_decoders()
  records = list(server.serve(requests(pairs)))
  compiled = compiled_decoders() - before
  assert compiled <= 1  # one shape for every mix and the padded last batch
  assert [(r["prompt"], r["inputs"]) for r in records] == pairs
  for (name, text), record in zip(pairs, records):
    assert record["prediction"] == alone(served, name, text), (name, text)
  assert [bool(r.get("truncated")) for r in records] == [
      False, False, False, True, False, False, False]
  stats = server.stats
  assert (stats.requests, stats.errors, stats.truncated, stats.batches) == (7, 0, 1, 2)
  # Another mix (one short batch) reuses the compiled function.
  before = compiled_decoders()
  list(make_server(served).serve(requests([("b", "q"), ("c", "r")])))
  assert compiled_decoders() == before


def test_error_requests_pass_through_in_place(served):
  reqs = requests([("a", "one"), ("b", "two"), ("c", "three")])
  reqs.insert(1, infer_io.Request(line=2, error="invalid JSON"))
  reqs.append(infer_io.Request(line=5, prompt="nope", inputs="x"))
  records = list(make_server(served).serve(reqs))
  assert len(records) == 5
  assert records[1] == {"line": 2, "error": "invalid JSON"}
  assert records[4]["line"] == 5 and "unknown prompt 'nope'" in records[4]["error"]
  assert [r.get("inputs") for r in records] == ["one", None, "two", "three", None]


def test_labels_and_ensembles_in_one_batch(served):
  labels = ["yes", "no", "maybe"]
  server = make_server(served, ensembles={"ab": ["a", "b"], "ba": ["b", "a"]},
                       labels={"c": labels, "ba": ["no", "yes"]})
  pairs = [("ab", "hello"), ("c", "hello"), ("a", "hello"), ("ba", "text")]
  records = list(server.serve(requests(pairs)))
  ab, c, a, ba = records
  # Ensemble of decoders: every prompt votes; two distinct votes -> the first one.
  votes = [alone(served, "a", "hello"), alone(served, "b", "hello")]
  assert ab["votes"] == votes and ab["prediction"] == votes[0]
  assert a["prediction"] == votes[0] and "scores" not in a
  # Ranking: scores per label, equal to ranking the example alone.
  expected = alone(served, "c", "hello", labels)
  assert list(c["scores"]) == labels
  np.testing.assert_allclose(list(c["scores"].values()), expected, atol=1e-4)
  assert c["prediction"] == labels[int(np.argmax(expected))]
  # Ranked ensemble: scores averaged over its prompts (b first).
  mean = (alone(served, "b", "text", ["no", "yes"]) +
          alone(served, "a", "text", ["no", "yes"])) / 2
  np.testing.assert_allclose(list(ba["scores"].values()), mean, atol=1e-4)
  assert ba["prediction"] == ["no", "yes"][int(np.argmax(mean))]
  assert len(ba["votes"]) == 2


def test_routes_reject_bad_ensembles_and_labels(served):
  bank = served[2]
  with pytest.raises(ValueError, match="unknown prompts \\['z'\\]"):
    serving.make_routes(bank, {"e": ["a", "z"]})
  with pytest.raises(ValueError, match="has the name of a served prompt"):
    serving.make_routes(bank, {"a": ["b", "c"]})
  with pytest.raises(ValueError, match="not served"):
    serving.make_routes(bank, labels={"q": ["x"]})
  with pytest.raises(ValueError, match="non-empty list of strings"):
    serving.make_routes(bank, labels={"a": "yes"})
  routes = serving.make_routes(bank, labels=["x", "y"])
  assert all(r.labels == ("x", "y") for r in routes.values())


def test_trim_matches_seqio_append_eos_after_trim(served):
  server = make_server(served)
  ids, cut = server.trim([5] * 10)
  assert ids.tolist() == [5] * (T - 1) + [1] and cut
  ids, cut = server.trim([5] * (T - 1) + [1])  # already ends with EOS, fits
  assert ids.tolist() == [5] * (T - 1) + [1] and not cut
  ids, cut = server.trim([5] * T + [1])  # one token too many
  assert len(ids) == T and cut


def _model_dir(root, method="prompt", initial=None):
  """A MODEL_DIR as prompt_tuning.train leaves it: config.json, exports, best/."""
  ckpt.check_or_write_run_config(str(root), {
      "method": method, "initial_checkpoint_path": initial,
      "model_config": CONFIG.to_dict()})
  prompts = {}
  for step in (2, 4):
    prompts[step] = np.full((3, CONFIG.emb_dim), step, np.float32)
    ckpt.export_step(str(root), step, {"encoder.prompt.prompt": prompts[step]})
  ckpt.export_best(str(root), {"encoder.prompt.prompt": prompts[2]}, {"step": 2})
  return prompts


def test_model_dir_sources_give_their_exports_and_frozen_model(tmp_path):
  run = tmp_path / "sst2_run"
  prompts = _model_dir(run, initial=None)
  assert prompt_files.prompt_path(run).parent.name == "best"
  assert prompt_files.prompt_path(run, "latest").parent.name == "checkpoint_4"
  assert prompt_files.prompt_path(run, 2).parent.name == "checkpoint_2"
  other = tmp_path / "lora_run"  # (LoPA runs are served: tests/test_lopa_bank.py)
  _model_dir(other, method="lora")
  with pytest.raises(infer_lib.InferError, match="method 'lora'"):
    infer_lib.served_record(other)
  config = CONFIG.to_dict()
  records = {"x": {"initial_checkpoint_path": "/ck/a", "model_config": config},
             "y": {"initial_checkpoint_path": "/ck/b", "model_config": config}}
  with pytest.raises(infer_lib.InferError, match="different frozen checkpoints"):
    infer_lib.frozen_model_source(records, None, None)
  assert infer_lib.frozen_model_source(records, "/given", None) == ("/given", CONFIG)

  # A MODEL_DIR (best export) and a plain file in one bank; the model config
  # comes from the run's config.json (random frozen model: no checkpoint path).
  extra = np.random.default_rng(0).normal(size=(2, CONFIG.emb_dim)).astype(np.float32)
  np.save(tmp_path / "rte.npy", extra)
  model, params, bank, _ = infer_lib.load_bank_model(
      {"sst2": str(run), "rte": str(tmp_path / "rte.npy")}, None, None)
  assert bank.names == ("sst2", "rte") and bank.lengths == (3, 2)
  stacked = np.asarray(params["encoder"]["prompt"]["prompts"])
  np.testing.assert_array_equal(stacked[0], prompts[2])  # best = step 2
  np.testing.assert_array_equal(stacked[1, 1:], extra)  # left-padded
  assert model.prompt is bank
  wide = tmp_path / "wide.npy"
  np.save(wide, np.zeros((2, CONFIG.emb_dim + 1), np.float32))
  # Checked before any frozen weight is read, naming the file and the shapes.
  with pytest.raises(ValueError, match=rf"wide\.npy has shape \[2, {CONFIG.emb_dim + 1}\]; "
                     rf"expected \[P, {CONFIG.emb_dim}\]"):
    infer_lib.load_bank_model({"w": str(wide)}, CONFIG, None)


def test_served_prompts_are_placed_as_they_were_trained(caplog):
  records = {"/runs/a": {"prompt_combine": "suffix"},
             "/runs/b": {"prompt_combine": "suffix"}}
  assert infer_lib.prompt_combine(records, None) == "suffix"
  assert infer_lib.prompt_combine({}, None) == "prefix"
  # Runs written before the mode was recorded were prefix prompts.
  assert infer_lib.prompt_combine({"/runs/old": {}}, None) == "prefix"
  with pytest.raises(infer_lib.InferError, match="--gin.infer.combine"):
    infer_lib.prompt_combine({**records, "/runs/c": {"prompt_combine": "prefix"}},
                             None)
  with caplog.at_level("WARNING"):
    assert infer_lib.prompt_combine(records, "prefix") == "prefix"
  assert "/runs/a was trained with its prompt combined 'suffix'" in caplog.text
