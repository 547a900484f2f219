"""The decoder-only tasks: GSM8K answer extraction, the prefix-tuning table formats
(against a plain-Python reading of the paper's data code, on mock TFDS data), TER,
and MBPP-format code tasks with execution-based pass@k."""
import json
import math

import numpy as np
import pytest
import sacrebleu
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import tasks
from tasks import code
from tasks import gsm8k
from tasks import sandbox
from tasks import table_to_text
from tasks.local import LocalDataError


def preprocessed(task_name, raw):
  """`raw` through the task's text preprocessors (everything before tokenizing)."""
  task = seqio.get_mixture_or_task(task_name)
  ds = tf.data.Dataset.from_tensors(raw)
  for step in task.preprocessors:
    if step is seqio.preprocessors.tokenize:
      break
    ds = step(ds)
  return [{k: (v.decode() if isinstance(v, bytes) else v) for k, v in ex.items()}
          for ex in tfds.as_numpy(ds)]


@pytest.fixture(autouse=True)
def registered():
  tasks.register_all()


# ==================================== GSM8K ===================================
@pytest.mark.parametrize("text, expected", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("so the total is $1,234.50.", "1234.5"),
    ("The answer is -3.", "-3"),
    ("temperature fell to \u22125 degrees", "-5"),
    ("#### +7", "7"),
    ("It costs 3.50 dollars", "3.5"),
    ("#### 4.0", "4"),
    ("half is .5", "0.5"),
    ("5-3 = 2", "2"),                     # hyphen between numbers is not a sign
    ("ages 1,2,3 and then 10", "10"),     # "1,2,3" is a list, not a thousands number
    ("#### 18 apples; 20 next week", "18"),   # first number after the last ####
    ("Work: 2 + 3 = 5 #### 5\n\nQuestion: If 9 cats ...", "5"),  # next problem cut
    ("He has 7 cats.\nQuestion: 100 dogs?", "7"),
    ("50% of them", "50"),
    ("no numbers here", None),
    ("####", None),
    ("2024-10", "10"),                    # a range or date, not a negative number
])
def test_final_number(text, expected):
  assert gsm8k.final_number(text) == expected


def test_gsm8k_format_and_metric():
  (ex,) = preprocessed("gsm8k", {
      "question": "  Tom has 3 bags of 4 apples. How many apples? ",
      "answer": "He has 3*4=<<3*4=12>>12 apples.\n#### 12",
      "annotation": "", "short_answer": "12"})
  assert ex["inputs"] == "Question: Tom has 3 bags of 4 apples. How many apples?\nAnswer:"
  assert ex["targets"] == "He has 3*4=12 apples.\n#### 12"
  task = seqio.get_mixture_or_task("gsm8k")
  targets = [task.postprocess_fn(t, example={}, is_target=True)
             for t in ["#### 12", "#### 1,000", "#### -4"]]
  predictions = [task.postprocess_fn(p) for p in
                 ["so 12 apples. #### 12.00", "It is 999.", "nothing"]]
  assert gsm8k.final_number_accuracy(targets, predictions) == {
      "final_number_accuracy": pytest.approx(100 / 3), "no_number_predictions": 1}
  assert set(task.splits) == {"train", "test"}  # no validation set is invented


# ================================ table-to-text ===============================
def test_hand_made_tables():
  e2e = preprocessed("lm_e2e_nlg", {
      "input_text": {"table": {
          "column_header": ["name", "eatType", "priceRange", "customer rating",
                            "familyFriendly", "near"],
          "row_number": np.ones(6, np.int16),
          "content": ["The Eagle", "coffee shop", "cheap", "average", "no",
                      "Burger King"]}},
      "target_text": "The Eagle is a cheap coffee shop near Burger King."})[0]
  assert e2e["inputs"] == ("name : The Eagle | Type : coffee shop | price : cheap | "
                           "customer rating : average | family friendly : no | "
                           "near : Burger King")
  assert e2e["targets"] == "The Eagle is a cheap coffee shop near Burger King."
  table = {"column_header": ["subject", "predicate", "object"] * 2,
           "row_number": np.array([0, 0, 0, 1, 1, 1], np.int16),
           "content": ["Mars Hill College", "JOINED", "1973",
                       "Mars Hill College", "LOCATION", "Mars Hill, North Carolina"]}
  web = preprocessed("lm_web_nlg", {"input_text": {"table": table, "context": "University"},
                                    "target_text": "t"})[0]
  assert web["inputs"] == ("| Mars Hill College : JOINED : 1973 | Mars Hill College : "
                           "LOCATION : Mars Hill, North Carolina")
  assert web["category"] == "University"
  dart = preprocessed("lm_dart", {"input_text": {"table": table}, "target_text": "t"})[0]
  assert dart["inputs"] == ("Mars Hill College : joined : 1973 | Mars Hill College : "
                            "location : Mars Hill, North Carolina")


def _reference(dataset, table):
  """The prefix-tuning data readers' linearisation, in plain Python."""
  # Real tables have one row number per cell; mock ones get ragged random columns,
  # which the task cuts to their common length (so does this reader).
  n = min(len(table["column_header"]), len(table["content"]), len(table["row_number"]))
  headers = [h.decode() for h in table["column_header"][:n]]
  contents = [c.decode() for c in table["content"][:n]]
  rows = [int(r) for r in table["row_number"][:n]]
  if dataset == "lm_e2e_nlg":
    names = dict(table_to_text.E2E_NAMES)
    return " | ".join(f"{names.get(h, h)} : {c}" for h, c in zip(headers, contents))
  triples = []
  for i, (row, content) in enumerate(zip(rows, contents)):
    if i == 0 or row != rows[i - 1]:
      triples.append([])
    triples[-1].append(content)
  text = ""
  for j, (subj, rela, obj) in enumerate(triples):
    if dataset == "lm_dart":
      rela = rela.lower()
      text += (" | " if j > 0 else "") + f"{subj} : {rela} : {obj}"
    else:  # WebNLG: " | " before every triple.
      text += f" | {subj} : {rela} : {obj}"
  return text.removeprefix(" ")  # the space the reader puts before the first "|"


@pytest.mark.parametrize("name", sorted(table_to_text.TASKS))
def test_mock_tables_match_the_reference_linearisation(name, t5_vocab_path, monkeypatch):
  monkeypatch.setenv("PROMPT_TUNING_VOCAB", t5_vocab_path)
  task = seqio.get_mixture_or_task(name)
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    raw = list(tfds.as_numpy(task.source.get_dataset("validation", shuffle=False)))
    out = list(tfds.as_numpy(task.get_dataset(
        {"inputs": 512, "targets": 64}, split="validation", shuffle=False)))
  assert len(raw) == len(out) == 4
  for r, o in zip(raw, out):
    table = r["input_text"]["table"]
    n = min(len(table["column_header"]), len(table["content"]), len(table["row_number"]))
    if name != "lm_e2e_nlg":  # Give the random cells real triples: 3 per row.
      table = {k: np.asarray(v)[:n - n % 3] for k, v in table.items()}
      table["row_number"] = (np.arange(len(table["content"])) // 3).astype(np.int16)
      r = dict(r, input_text=dict(r["input_text"], table=table))
      (o,) = preprocessed(name, r)
      assert o["inputs"] == _reference(name, table)
      continue
    assert o["inputs_pretokenized"].decode() == _reference(name, table)
    assert o["targets_pretokenized"] == r["target_text"]


def test_ter_with_several_references():
  targets = [{"value": "the cat sat on the mat", "group": "a"},
             {"value": "a cat sat", "group": "a"},
             {"value": "a dog barks", "group": "b"}]
  predictions = ["the cat sat", "ignored: same input as before", "a dog"]
  # Input a: best reference "a cat sat" (1 edit; average length 4.5); b: 1 edit of 3.
  assert table_to_text.ter(targets, predictions)["ter"] == pytest.approx(
      100 * 2 / 7.5)
  single = table_to_text.ter(["a b c d"], ["a b x d"])["ter"]
  assert single == pytest.approx(sacrebleu.corpus_ter(["a b x d"], [["a b c d"]]).score)


# ==================================== code ====================================
@pytest.mark.parametrize("n, c, k, expected", [
    (1, 1, 1, 1.0), (1, 0, 1, 0.0), (5, 2, 1, 0.4), (5, 0, 3, 0.0), (2, 2, 2, 1.0),
    (10, 3, 5, 1 - math.comb(7, 5) / math.comb(10, 5)), (4, 3, 2, 1.0)])
def test_pass_at_k_estimator(n, c, k, expected):
  assert code.pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_bad_counts():
  with pytest.raises(ValueError, match="pass@3"):
    code.pass_at_k(2, 1, 3)


def test_extract_code():
  assert code.extract_code("```python\ndef f():\n  return 1\n```\nExplanation") == (
      "def f():\n  return 1")
  assert code.extract_code("def f(): pass\n[DONE] trailing") == "def f(): pass"
  assert code.extract_code(b"x = 1") == "x = 1"


def _targets(problems):
  return [{"task_id": p["task_id"], "tests": p["tests"], "setup": p["setup"],
           "code": p["code"]} for p in problems]


def test_pass_at_1_on_hand_made_generations():
  problems = code.parse_problems("\n".join(json.dumps(p) for p in code.SAMPLE))
  metric = code.PassAtK(1, sandbox.Limits(timeout_seconds=3.0))
  predictions = [p["code"] for p in problems]
  assert metric(_targets(problems), predictions) == {"pass@1": 100.0, "timeouts": 0}
  predictions[1] = "def is_palindrome(s):\n    return s == s[::-1]"  # misses case
  predictions[2] = "def count_vowels(s):\n    while True: pass"
  predictions[3] = "import sys\nsys.exit(0)"
  assert metric(_targets(problems), predictions) == {"pass@1": 25.0, "timeouts": 1}


def test_pass_at_1_averages_samples_per_problem():
  problems = code.parse_problems("\n".join(json.dumps(p) for p in code.SAMPLE[:2]))
  targets = _targets([problems[0]] * 4 + [problems[1]] * 2)
  predictions = [problems[0]["code"], "def sum_squares(xs): return 0", "oops(",
                 problems[0]["code"], problems[1]["code"], problems[1]["code"]]
  # Problem 1: 2 of 4 pass (0.5); problem 2: 2 of 2 (1.0).
  result = code.PassAtK(1, sandbox.Limits(timeout_seconds=3.0))(targets, predictions)
  assert result["pass@1"] == pytest.approx(75.0)
  result = code.PassAtK(2, sandbox.Limits(timeout_seconds=3.0))(targets, predictions)
  assert result["pass@2"] == pytest.approx(100 * (1 - 1 / 6 + 1) / 2)


def test_mbpp_sample_task_end_to_end(t5_vocab_path, monkeypatch):
  monkeypatch.setenv("PROMPT_TUNING_VOCAB", t5_vocab_path)
  task = seqio.get_mixture_or_task("mbpp_sample")
  (ex,) = list(tfds.as_numpy(task.get_dataset(
      {"inputs": 256, "targets": 128}, split="validation", shuffle=False).take(1)))
  assert ex["inputs_pretokenized"].decode().startswith(
      "Write a function to return the sum of the squares")
  assert "Your code should pass these tests:\nassert sum_squares([1, 2, 3]) == 14" in (
      ex["inputs_pretokenized"].decode())
  target = task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True)
  prediction = task.postprocess_fn("```python\n" + target["code"] + "\n```")
  (metric,) = task.metric_fns
  assert metric([target], [prediction])["pass@1"] == 100.0


def test_register_mbpp_task_from_jsonl(tmp_path):
  path = tmp_path / "mbpp.jsonl"
  path.write_text("\n".join(json.dumps(p) for p in code.SAMPLE[:2]) + "\n")
  assert code.register_mbpp_task("my_mbpp", validation=str(path)) == "my_mbpp"
  assert set(seqio.get_mixture_or_task("my_mbpp").splits) == {"validation"}
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"text": "t", "code": "c", "test_list": "assert 1"}) + "\n")
  with pytest.raises(LocalDataError, match=r"bad.jsonl:1: \"test_list\" must be a list"):
    code.register_mbpp_task("bad_mbpp", test=str(bad))
  with pytest.raises(LocalDataError, match="needs at least one"):
    code.register_mbpp_task("none_mbpp")
