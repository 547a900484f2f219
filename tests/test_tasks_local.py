"""Local JSONL/TSV tasks: good files, malformed lines, gin registration."""
import json

import gin
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest
import seqio
import tensorflow_datasets as tfds

import tasks
from tasks import local
from tasks import vocab

LABELS = ["negative", "positive"]


def write(path, text, mode="w"):
  with open(path, mode) as f:
    f.write(text)
  return str(path)


@pytest.fixture()
def jsonl(tmp_path):
  rows = [{"inputs": "sentiment: a gem of a film", "targets": "positive"},
          {"inputs": "sentiment: dull\tand long", "targets": "negative",
           "id": 7}]
  return write(tmp_path / "train.jsonl",
               "".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def tsv(tmp_path):
  return write(tmp_path / "dev.tsv", "inputs\ttargets\r\n"
               "sentiment: loved it\tpositive\r\nsentiment: meh\tnegative")


def test_reads_good_files(jsonl, tsv):
  assert local.read_examples(jsonl) == [
      {"inputs": "sentiment: a gem of a film", "targets": "positive"},
      {"inputs": "sentiment: dull\tand long", "targets": "negative"}]
  assert local.read_examples(tsv, labels=LABELS) == [
      {"inputs": "sentiment: loved it", "targets": "positive"},
      {"inputs": "sentiment: meh", "targets": "negative"}]
  assert local.parse_jsonl(b'\xef\xbb\xbf{"inputs": "", "targets": "t"}') == [
      {"inputs": "", "targets": "t"}]


MALFORMED_JSONL = [
    (b'{"inputs": "a", "targets": "positive"}\n{"inputs": "b"\n', 2,
     "not valid JSON"),
    (b'["a", "b"]\n', 1, "expected a JSON object"),
    (b'{"inputs": "a"}\n', 1, 'missing the "targets" field'),
    (b'{"inputs": 3, "targets": "positive"}\n', 1, '"inputs" must be a string'),
    (b'{"inputs": "a", "targets": "positive"}\n\n'
     b'{"inputs": "b", "targets": "negative"}\n', 2, "empty line"),
    (b'{"inputs": "\xff", "targets": "positive"}\n', 1, "not valid UTF-8"),
    (b'{"inputs": "a", "targets": "neutral"}\n', 1, "not one of the labels"),
    (b'{"inputs": "a", "targets": ""}\n', 1, '"targets" is empty'),
    (b'{"inputs": "\\ud800", "targets": "positive"}\n', 1, "surrogate"),
    (b"[" * 100000 + b"\n", 1, "not valid JSON"),
]


@pytest.mark.parametrize("data,line,problem", MALFORMED_JSONL)
def test_malformed_jsonl_names_file_and_line(tmp_path, data, line, problem):
  path = write(tmp_path / "bad.jsonl", data, mode="wb")
  with pytest.raises(local.LocalDataError) as e:
    local.read_examples(path, labels=LABELS)
  assert str(e.value).startswith(f"{path}:{line}: "), str(e.value)
  assert problem in str(e.value)
  assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("data,line,problem", [
    (b"a\tpositive\nb\n", 2, "expected 2 tab-separated fields"),
    (b"a\tpositive\tx\n", 1, "found 3"),
    (b"a\tpositive\n\t\n", 2, "empty line"),
    (b"a\t\n", 1, '"targets" is empty'),
])
def test_malformed_tsv_names_file_and_line(tmp_path, data, line, problem):
  path = write(tmp_path / "bad.tsv", data, mode="wb")
  with pytest.raises(local.LocalDataError, match=problem) as e:
    local.read_examples(path)
  assert str(e.value).startswith(f"{path}:{line}: ")


def test_file_level_errors(tmp_path):
  with pytest.raises(local.LocalDataError, match="file is empty"):
    local.read_examples(write(tmp_path / "e.jsonl", ""))
  with pytest.raises(local.LocalDataError, match="only a header"):
    local.read_examples(write(tmp_path / "h.tsv", "inputs\ttargets\n"))
  with pytest.raises(local.LocalDataError, match="unknown file type '.csv'"):
    local.read_examples(write(tmp_path / "x.csv", "a,b\n"))
  with pytest.raises(local.LocalDataError, match="no such file"):
    local.read_examples(str(tmp_path / "missing.jsonl"))
  with pytest.raises(local.LocalDataError, match="at least one of train="):
    local.register_local_task("nothing")
  with pytest.raises(local.LocalDataError, match="distinct non-empty"):
    local.register_local_task("dup", train=str(tmp_path / "a.jsonl"),
                              labels=["a", "a"])


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_load_or_raise_the_documented_error(data):
  for parse in (local.parse_jsonl, local.parse_tsv):
    try:
      examples = parse(data)
    except local.LocalDataError:
      continue
    assert examples and all(set(e) == {"inputs", "targets"} for e in examples)


def test_registered_task_yields_tokenized_examples(jsonl, tsv, t5_vocab_path,
                                                   monkeypatch):
  monkeypatch.setenv(vocab.ENV_VAR, t5_vocab_path)
  name = local.register_local_task("my_sentiment", train=jsonl,
                                   validation=tsv, labels=LABELS)
  assert name == "my_sentiment"
  assert tasks.get_label_strings("my_sentiment") == LABELS
  assert tasks.get_label_strings("taskless_my_sentiment") == LABELS
  task = seqio.get_mixture_or_task(name)
  assert task.num_input_examples("train") == 2
  ex = next(iter(tfds.as_numpy(task.get_dataset(
      {"inputs": 32, "targets": 8}, split="validation", shuffle=False))))
  assert ex["inputs_pretokenized"] == b"sentiment: loved it"
  assert ex["targets"][-1] == 1
  assert vocab.resolved_vocabulary().decode(list(ex["targets"][:-1])) == (
      "positive")
  assert [fn.metric_names for fn in task.metric_fns] == [
      ("accuracy",), ("mean_2class_f1",), ("invalid_predictions",)]
  # Registering again with the same files is a no-op; other files replace.
  assert local.register_local_task("my_sentiment", train=jsonl,
                                   validation=tsv, labels=LABELS) == name
  assert seqio.get_mixture_or_task(name) is task
  local.register_local_task("my_sentiment", train=jsonl)
  replaced = seqio.get_mixture_or_task(name)
  assert replaced is not task and list(replaced.splits) == ["train"]
  assert [fn.metric_names for fn in replaced.metric_fns] == [
      ("sequence_accuracy",), ("bleu",)]


def test_gin_macro_registers_the_task(jsonl, tmp_path):
  labels_file = write(tmp_path / "labels.txt", "negative\npositive\n")

  @gin.configurable
  def consumer(mixture_or_task_name=None):
    return mixture_or_task_name

  gin.parse_config(f"""
      MIXTURE_OR_TASK_NAME = @tasks.local.register_local_task()
      consumer.mixture_or_task_name = %MIXTURE_OR_TASK_NAME
      tasks.local.register_local_task.name = "gin_sentiment"
      tasks.local.register_local_task.train = "{jsonl}"
      tasks.local.register_local_task.labels = "{labels_file}"
  """)
  try:
    assert consumer() == "gin_sentiment"
    assert tasks.get_label_strings("gin_sentiment") == LABELS
  finally:
    gin.clear_config()
