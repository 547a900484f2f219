"""Metrics and postprocessors on hand-computed cases, edge cases and sklearn."""
import numpy as np
import pytest
import sklearn.metrics

from tasks import metrics
from tasks import postprocessors as post

INVALID = post.INVALID


def test_every_metric_returns_its_declared_names():
  cases = [
      (metrics.accuracy, [0, 1], [0, 1]),
      (metrics.invalid_predictions, [0, 1], [0, -1]),
      (metrics.f1_with_invalid, [0, 1], [0, 1]),
      (metrics.mean_multiclass_f1(3), [0, 1], [0, 2]),
      (metrics.matthews_corrcoef, [0, 1], [0, 1]),
      (metrics.gender_parity, [{"value": 0, "group": 0}] * 2,
       [{"value": 0}] * 2),
      (metrics.multirc_f1_over_all_answers, [{"value": 1, "group": 0}],
       [{"value": 1}]),
      (metrics.multirc_exact_match, [{"value": 1, "group": 0}],
       [{"value": 1}]),
      (metrics.squad, [["a"]], ["a"]),
      (metrics.record, [{"value": ["a"], "group": (0, 0)}], [{"value": "a"}]),
  ]
  for fn, targets, predictions in cases:
    assert tuple(fn(targets, predictions)) == fn.metric_names, fn


# ============================== classification ================================
def test_accuracy_counts_invalid_as_wrong():
  assert metrics.accuracy([0, 1, 1, 0], [0, 1, 0, INVALID]) == {
      "accuracy": 50.0}
  assert metrics.invalid_predictions([0, 1, 1, 0], [0, 1, 0, INVALID]) == {
      "invalid_predictions": 1}
  assert metrics.accuracy([], []) == {"accuracy": 0.0}
  assert metrics.accuracy(["Tom", "a"], ["Tom", "b"]) == {"accuracy": 50.0}


def test_lengths_must_match():
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.accuracy([0, 1], [0])


def test_binary_f1_hand_computed():
  # The invalid prediction becomes the wrong class (0 here):
  # preds [1, 0, 1, 0] vs [1, 1, 0, 0]: TP=1, FP=1, FN=1 -> F1 = 0.5.
  assert metrics.f1_with_invalid([1, 1, 0, 0], [1, INVALID, 1, 0])["f1"] == (
      pytest.approx(50.0))
  assert metrics.f1_with_invalid([1, 1], [0, 0])["f1"] == 0.0  # all wrong
  assert metrics.f1_with_invalid([0, 0], [0, 0])["f1"] == 0.0  # no positive
  assert metrics.f1_with_invalid([1], [INVALID])["f1"] == 0.0


def test_macro_f1_hand_computed():
  # class 0: P=1, R=1/2 -> 2/3; class 1: 0; class 2: P=1/2, R=1 -> 2/3.
  fn = metrics.mean_multiclass_f1(3)
  score = fn([0, 1, 2, 0], [0, 2, 2, INVALID])["mean_3class_f1"]
  assert score == pytest.approx(100 * (2 / 3 + 0 + 2 / 3) / 3)


def test_matthews_hand_computed():
  # TP=1, TN=2, FP=0, FN=1 -> 2 / sqrt(1 * 2 * 2 * 3).
  expected = 100 * 2 / np.sqrt(12)
  assert metrics.matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 0])[
      "matthews_corrcoef"] == pytest.approx(expected)
  # T5 keeps an invalid prediction as a class of its own (sklearn on the raw
  # ids): the issue's example, 57.74 rather than 33.33 with it flipped.
  assert metrics.matthews_corrcoef([1, 1, 0, 0], [1, INVALID, 0, 0])[
      "matthews_corrcoef"] == pytest.approx(100 * sklearn.metrics.
                                            matthews_corrcoef(
                                                [1, 1, 0, 0], [1, -1, 0, 0]))
  issue = metrics.matthews_corrcoef([0, 0, 0, 1, 1, 1],
                                    [0, 0, INVALID, 1, 1, INVALID])
  assert issue["matthews_corrcoef"] == pytest.approx(57.735, abs=1e-3)
  assert metrics.matthews_corrcoef([1, 0], [1, 1])["matthews_corrcoef"] == 0


@pytest.mark.parametrize("seed", range(5))
def test_agreement_with_sklearn(seed):
  rng = np.random.RandomState(seed)
  t = rng.randint(0, 2, size=50)
  p = rng.randint(0, 2, size=50)
  assert metrics.accuracy(list(t), list(p))["accuracy"] == pytest.approx(
      100 * sklearn.metrics.accuracy_score(t, p))
  assert metrics.f1_with_invalid(t, p)["f1"] == pytest.approx(
      100 * sklearn.metrics.f1_score(t, p))
  assert metrics.matthews_corrcoef(t, p)["matthews_corrcoef"] == (
      pytest.approx(100 * sklearn.metrics.matthews_corrcoef(t, p)))
  t3, p3 = rng.randint(0, 3, size=50), rng.randint(0, 3, size=50)
  assert metrics.mean_multiclass_f1(3)(t3, p3)["mean_3class_f1"] == (
      pytest.approx(100 * sklearn.metrics.f1_score(t3, p3, average="macro")))


def test_gender_parity_pairs():
  targets = [{"value": 0, "group": 0}, {"value": 0, "group": 0},
             {"value": 1, "group": 1}, {"value": 1, "group": 1},
             {"value": 1, "group": 2}]  # group 2 has no partner: ignored.
  predictions = [{"value": 0}, {"value": 0}, {"value": 1}, {"value": 0},
                 {"value": 1}]
  assert metrics.gender_parity(targets, predictions) == {
      "gender_parity": 50.0}
  assert metrics.accuracy(targets, predictions)["accuracy"] == 80.0
  assert metrics.gender_parity([], []) == {"gender_parity": 0.0}


def test_multirc_f1a_and_exact_match():
  targets = [{"value": 1, "group": 0}, {"value": 0, "group": 0},
             {"value": 1, "group": 1}]
  predictions = [{"value": 1}, {"value": 0}, {"value": INVALID}]
  # Question 0 fully right, question 1 wrong.
  assert metrics.multirc_exact_match(targets, predictions) == {
      "exact_match": 50.0}
  # Invalid -> 0: preds [1, 0, 0] vs [1, 0, 1]: P=1, R=1/2.
  assert metrics.multirc_f1_over_all_answers(targets, predictions)[
      "f1"] == pytest.approx(100 * 2 / 3)
  assert metrics.invalid_predictions(targets, predictions) == {
      "invalid_predictions": 1}


# ==================================== QA ======================================
def test_squad_normalization():
  assert metrics.normalize_squad("The Denver  Broncos!") == "denver broncos"
  assert metrics.normalize_squad("A U.S. an-thing") == "us anthing"
  assert metrics.normalize_squad("theatre") == "theatre"


def test_squad_max_over_answers_and_edge_cases():
  answers = [["Denver Broncos", "Broncos"]]
  assert metrics.squad(answers, ["the broncos"]) == {"em": 100.0, "f1": 100.0}
  result = metrics.squad(answers, ["Denver"])
  assert result["em"] == 0.0
  assert result["f1"] == pytest.approx(100 * 2 / 3)  # P=1, R=1/2 (tie-free)
  assert metrics.squad(answers, [""]) == {"em": 0.0, "f1": 0.0}
  assert metrics.squad([["Paris"]], ["Rome"]) == {"em": 0.0, "f1": 0.0}
  # Only an article: both sides normalize to "" -> EM counts, F1 does not.
  assert metrics.squad([["The"]], ["a"]) == {"em": 100.0, "f1": 0.0}
  assert metrics.squad([[]], ["anything"]) == {"em": 0.0, "f1": 0.0}
  # Averages over questions.
  assert metrics.squad([["a b"], ["c"]], ["a b", "d"]) == {"em": 50.0,
                                                           "f1": 50.0}


def test_squad_ties_between_answers_take_the_shared_best():
  # Both references give F1 = 2/3 for "york": the max is that value, once.
  result = metrics.squad([["new york", "york city"]], ["york"])
  assert result == {"em": 0.0, "f1": pytest.approx(100 * 2 / 3)}
  # A tie between an exact and a partial match keeps the exact one.
  assert metrics.squad([["york", "new york"]], ["York"]) == {
      "em": 100.0, "f1": 100.0}


def test_record_scores_each_query_once():
  targets = [{"value": ["Fishermen", "fishermen"], "group": (5, 9)},
             {"value": ["Fishermen", "fishermen"], "group": (5, 9)},
             {"value": ["harbor"], "group": (5, 10)}]
  predictions = [{"value": "fishermen"}, {"value": "whatever"},
                 {"value": "boats"}]
  assert metrics.record(targets, predictions) == {"em": 50.0, "f1": 50.0}


# ============================== postprocessors ================================
def test_class_label_postprocessor():
  labels = post.ClassLabel(["entailment", "not_entailment"])
  assert labels("entailment") == 0
  assert labels(b"not_entailment", example={}, is_target=True) == 1
  for bad in ("Entailment", "entailment.", "", "not entailment",
              b"\xff\xfe"):
    assert labels(bad) == INVALID


def test_multirc_and_record_postprocessors():
  ex = {"idx/question": np.int32(17), "idx/passage": np.int32(3),
        "idx/query": np.int32(4),
        "answers": np.array([b"Fishermen", b"fishermen"], dtype=object)}
  assert post.multirc("True", example=ex, is_target=True) == {
      "value": 1, "group": 17}
  assert post.multirc("yes", example=ex) == {"value": INVALID}
  assert post.record("x", example=ex, is_target=True) == {
      "value": ["Fishermen", "fishermen"], "group": (3, 4)}
  assert post.record(b"Fishermen", example=ex) == {"value": "Fishermen"}
  assert post.qa("ignored", example=ex, is_target=True) == [
      "Fishermen", "fishermen"]


def test_axg_postprocessor_groups_pairs():
  fn = post.GroupedClassLabel(["entailment", "not_entailment"])
  assert fn("entailment", example={"idx": np.int32(5)}, is_target=True) == {
      "value": 0, "group": 2}
  assert fn("garbage", example={"idx": 4}) == {"value": INVALID}


def test_wsc_simple_postprocessor():
  ex = {"targets_pretokenized": b"The city councilmen", "label": np.int64(1)}
  assert post.wsc_simple("ignored", example=ex, is_target=True) == 1
  assert post.wsc_simple("the councilmen", example=ex) == 1
  assert post.wsc_simple("City Councilmen", example=ex) == 1
  assert post.wsc_simple("demonstrators", example=ex) == 0
  # Empty or determiner-only predictions are -1 (wrong for either label).
  assert post.wsc_simple("", example=ex) == INVALID
  assert post.wsc_simple(" The  ", example=ex) == INVALID
  assert metrics.accuracy([1, 0, 0, 1, 1], [post.wsc_simple("", example=ex)] *
                          5) == {"accuracy": 0.0}
  possessive = {"targets_pretokenized": b"Bob's hat", "label": 1}
  assert post.wsc_simple("Bob", example=possessive) == 0
  assert post.wsc_simple("bob's hat", example=possessive) == 1
