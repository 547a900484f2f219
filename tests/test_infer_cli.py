"""`python -m prompt_tuning.infer` end to end: three prompts from one frozen model.

A tiny random T5 saved with `checkpoints.save`, three hand-made `.npy` prompts (one
shorter), the T5 vocabulary of the shared fixtures. Every prediction of the command
line must equal running that example alone with its prompt through the Python API.
"""
import json

import flax.linen as nn
import gin
import jax
import numpy as np
import pytest

from conftest import T5_VOCAB, run_entry_point
from prompt_tuning import checkpoints
from prompt_tuning.models import decoding
from prompt_tuning.inference import ranking
from prompt_tuning.params import with_params
from prompt_tuning.methods.prompt import Prompt
from prompt_tuning.models.config import preset
from prompt_tuning.models.t5 import Transformer

CONFIG = preset("tiny", vocab_size=32128, dropout_rate=0.0)
LENGTHS = {"inputs": 16, "targets": 4}
LABELS = ["yes", "no"]
LINES = [
    {"prompt": "a", "inputs": "hello world", "id": 1},
    {"prompt": "b", "inputs": "the movie was great"},
    "{not json",
    {"prompt": "c", "inputs": "is this good?"},  # ranked against LABELS
    {"prompt": "zzz", "inputs": "x"},
    {"prompt": "a"},
    {"prompt": "ab", "inputs": "an ensemble of two"},  # two rows: a and b
    {"prompt": "a", "inputs": "word " * 40},  # truncated to 16 tokens
    {"prompt": "b", "inputs": "hello world"},
    {"prompt": "c", "inputs": "no way"},
    {"prompt": "a", "inputs": "last one"},  # 9 rows: the third batch is padded
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("infer")
  model = Transformer(CONFIG)
  dummy = np.ones((1, 4), np.int32)
  params = nn.meta.unbox(jax.jit(lambda r: model.init(r, dummy, dummy)["params"])(
      jax.random.PRNGKey(0)))
  checkpoints.save(root / "frozen", params, CONFIG)
  rng = np.random.default_rng(0)
  prompts = {"a": rng.normal(size=(3, CONFIG.emb_dim)).astype(np.float32),
             "b": 2 * rng.normal(size=(3, CONFIG.emb_dim)).astype(np.float32),
             "c": rng.normal(size=(2, CONFIG.emb_dim)).astype(np.float32)}
  for name, prompt in prompts.items():
    np.save(root / f"{name}.npy", prompt)
  with open(root / "in.jsonl", "w") as f:
    for line in LINES:
      f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
  return root, params, prompts


def run_cli(args):
  return run_entry_point("prompt_tuning.infer", args, timeout=600)


class Reference:
  """Each example alone (batch of one) with its prompt as a plain `Prompt`."""

  def __init__(self, params, prompts):
    import seqio  # pylint: disable=g-import-not-at-top
    self.vocab = seqio.SentencePieceVocabulary(str(T5_VOCAB), extra_ids=100)
    self.params, self.prompts = params, prompts

  def _model(self, name):
    prompt = self.prompts[name]
    return (Transformer(CONFIG, prompt=Prompt(length=prompt.shape[0])),
            with_params(self.params, {"encoder/prompt": {"prompt": prompt}}))

  def tokens(self, text):
    ids = list(self.vocab.encode(text))[:LENGTHS["inputs"] - 1] + [1]
    out = np.zeros((1, LENGTHS["inputs"]), np.int32)
    out[0, :len(ids)] = ids
    return out

  def decode(self, name, text):
    model, params = self._model(name)
    ids = np.asarray(decoding.greedy_decode(
        model, params, self.tokens(text),
        max_decode_length=LENGTHS["targets"]))[0].tolist()
    return self.vocab.decode(ids[:ids.index(1)] if 1 in ids else ids)

  def scores(self, name, text, labels):
    model, params = self._model(name)
    label_tokens = np.zeros((len(labels), 8), np.int32)
    for k, label in enumerate(labels):
      ids = list(self.vocab.encode(label)) + [1]
      label_tokens[k, :len(ids)] = ids
    return np.asarray(ranking.rank_classify(model, params, self.tokens(text),
                                            label_tokens)[1][0])


def test_three_prompts_one_batch_from_jsonl(setup):
  root, params, prompts = setup
  out = root / "out" / "predictions.jsonl"
  proc = run_cli([
      "--gin_file=runs/prompt_infer.gin",
      f"--gin.INITIAL_CHECKPOINT_PATH='{root / 'frozen'}'",
      "--gin.PROMPT_FILES={" + ", ".join(f"'{n}': '{root / n}.npy'" for n in "ab") +
      "}", f"--prompt=c={root / 'c.npy'}",
      f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.INFER_BATCH_SIZE=4",
      f"--gin.LABELS={{'c': {LABELS}}}", "--gin.ENSEMBLES={'ab': ['a', 'b']}",
      f"--input_file={root / 'in.jsonl'}", f"--output_file={out}"])
  assert proc.returncode == 0, proc.stderr[-5000:]
  assert ("11 lines -> " in proc.stderr and "8 predictions, 3 error records, "
          "1 input truncated to 16 tokens; 3 batches of 4" in proc.stderr), proc.stderr
  records = [json.loads(l) for l in out.read_text().splitlines()]
  assert len(records) == len(LINES)

  # Bad lines: an error record in place, naming the 1-based line.
  assert records[2]["line"] == 3 and "invalid JSON" in records[2]["error"]
  assert records[4] == {"line": 5, "error": "unknown prompt 'zzz'; served prompts: "
                                           "['a', 'b', 'c', 'ab']"}
  assert records[5] == {"line": 6, "error": "missing \"inputs\""}

  ref = Reference(params, prompts)
  for line, record in zip(LINES, records):
    if isinstance(line, str) or "error" in line or line["prompt"] == "zzz" or (
        "inputs" not in line):
      continue
    assert record["prompt"] == line["prompt"] and record["inputs"] == line["inputs"]
    name, text = line["prompt"], line["inputs"]
    if name == "c":  # rank classification: scores per label, as alone
      expected = ref.scores(name, text, LABELS)
      assert list(record["scores"]) == LABELS
      np.testing.assert_allclose(list(record["scores"].values()), expected, atol=1e-4)
      assert record["prediction"] == LABELS[int(np.argmax(expected))]
    elif name == "ab":  # ensemble: a and b vote; two distinct votes -> a's
      votes = [ref.decode("a", text), ref.decode("b", text)]
      assert record["votes"] == votes and record["prediction"] == votes[0]
    else:
      assert record["prediction"] == ref.decode(name, text), line
      assert "scores" not in record
  assert records[0]["id"] == 1  # other fields are echoed
  assert records[7]["truncated"] is True
  assert sum("truncated" in r for r in records) == 1


def test_missing_input_file_is_a_fatal_error_with_a_message(tmp_path):
  proc = run_cli(["--gin_file=runs/prompt_infer.gin",
                  f"--input_file={tmp_path / 'nothing.jsonl'}"])
  assert proc.returncode == 1
  assert "input file" in proc.stderr and "nothing.jsonl not found" in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_task_split_with_its_labels_through_the_gin_file(setup, clean_gin, tmp_path):
  """In-process: runs/prompt_infer.gin, a local seqio task's split, LABELS = the
  task name, one prompt (no `prompt` needed), a missing prompt file is fatal."""
  from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
  from prompt_tuning import infer as infer_lib  # pylint: disable=g-import-not-at-top
  root, params, prompts = setup
  with open(tmp_path / "validation.jsonl", "w") as f:
    for text, label in (("good film", "yes"), ("bad film " * 20, "no"), ("ok", "yes")):
      f.write(json.dumps({"inputs": text, "targets": label}) + "\n")
  task = "tasks.local.register_local_task"
  cli.parse_gin(["runs/prompt_infer.gin"], [
      f"tasks.vocab.vocabulary_path.path = '{T5_VOCAB}'",
      f"MIXTURE_OR_TASK_NAME = @{task}()", f"{task}.name = 'infer_yes_no'",
      f"{task}.validation = '{tmp_path / 'validation.jsonl'}'",
      f"{task}.labels = {LABELS}", f"TASK_FEATURE_LENGTHS = {LENGTHS}",
      f"INITIAL_CHECKPOINT_PATH = '{root / 'frozen'}'",
      f"PROMPT_FILES = {{'c': '{root / 'c.npy'}'}}", "LABELS = %MIXTURE_OR_TASK_NAME",
      "INFER_BATCH_SIZE = 2", f"INFER_OUTPUT = '{tmp_path / 'out.jsonl'}'"])
  summary = infer_lib.infer()
  assert (summary.lines, summary.errors, summary.truncated, summary.batches) == (
      3, 0, 1, 2)
  records = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert [r["targets"] for r in records] == ["yes", "no", "yes"]
  assert all(r["task"] == "infer_yes_no" and r["prompt"] == "c" for r in records)
  ref = Reference(params, prompts)
  for record in records:
    expected = ref.scores("c", record["inputs"], LABELS)
    np.testing.assert_allclose(list(record["scores"].values()), expected, atol=1e-4)
  assert records[1].get("truncated") is True

  with pytest.raises(infer_lib.InferError, match="missing.npy"):
    infer_lib.infer(prompt_files={"c": str(root / "missing.npy")})


def test_main_turns_fatal_errors_into_one_line_and_exit_status_1(monkeypatch):
  """InferError (bad settings, missing prompt or checkpoint) → exit 1, message
  only; the parsed --prompt flags are merged into PROMPT_FILES."""
  from types import SimpleNamespace  # pylint: disable=g-import-not-at-top
  from prompt_tuning import cli  # pylint: disable=g-import-not-at-top
  from prompt_tuning import infer as infer_lib  # pylint: disable=g-import-not-at-top
  seen = {}

  def fake_infer(**kwargs):
    seen.update(kwargs)
    raise infer_lib.InferError("Prompt source /x/rte.npy does not exist.\n  In call "
                               "to configurable 'infer' (<function infer at 0x1>)")

  monkeypatch.setattr(infer_lib, "FLAGS", SimpleNamespace(
      input_file=None, output_file="out.jsonl", prompt=["rte=/x/rte.npy", "/y/sst2"]))
  monkeypatch.setattr(cli, "setup", lambda required_macros: None)
  monkeypatch.setattr(cli, "macro", lambda name, default=None: {
      "PROMPT_FILES": {"mrpc": "/z/mrpc.npy"}}.get(name, default))
  monkeypatch.setattr(infer_lib, "infer", fake_infer)
  with pytest.raises(SystemExit) as exit_info:
    infer_lib.main(["prog"])
  assert exit_info.value.code == ("prompt_tuning.infer: error: Prompt source "
                                  "/x/rte.npy does not exist.")
  assert seen == {"output_file": "out.jsonl", "prompt_files": {
      "mrpc": "/z/mrpc.npy", "rte": "/x/rte.npy", "sst2": "/y/sst2"}}
