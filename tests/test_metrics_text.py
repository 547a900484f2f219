"""BLEU and ROUGE: multi-reference grouping, hand-computed ROUGE, edge cases."""
import pytest
import sacrebleu

from tasks import postprocessors
from tasks import text_metrics


def grouped(pairs):
  return [{"value": ref, "group": key} for key, ref in pairs]


def test_metric_names_are_declared():
  assert tuple(text_metrics.bleu(["a b c d"], ["a b c d"])) == (
      text_metrics.bleu.metric_names)
  assert tuple(text_metrics.rouge(["a"], ["a"])) == (
      text_metrics.rouge.metric_names)


def test_bleu_uses_every_reference_of_an_input():
  targets = grouped([("x", "a cat sat on the mat today"),
                     ("x", "the cat sat on a mat today"),
                     ("y", "dogs bark loudly at night again")])
  predictions = ["the cat sat on a mat today", "the cat sat on a mat today",
                 "dogs bark loudly at night again"]
  assert text_metrics.bleu(targets, predictions)["bleu"] == pytest.approx(100)
  # With only the first reference the first input is no longer perfect.
  single = ["a cat sat on the mat today", "dogs bark loudly at night again"]
  partial = text_metrics.bleu(
      single, ["the cat sat on a mat today", "dogs bark loudly at night again"])
  assert partial["bleu"] < 100
  assert partial["bleu"] == pytest.approx(sacrebleu.corpus_bleu(
      ["the cat sat on a mat today", "dogs bark loudly at night again"],
      [single], tokenize="13a").score)


def test_grouping_keeps_first_prediction_and_order():
  refs, preds = text_metrics.group_references(
      grouped([("b", "r1"), ("a", "r2"), ("b", "r3")]), ["p1", "p2", "p3"])
  assert refs == [["r1", "r3"], ["r2"]]
  assert preds == ["p1", "p2"]
  refs, preds = text_metrics.group_references(["r1", "r1"], ["p1", "p2"])
  assert refs == [["r1"], ["r1"]] and preds == ["p1", "p2"]


def test_bleu_matches_sacrebleu_with_variable_reference_counts():
  targets = grouped([(0, "the quick brown fox jumps"),
                     (0, "a quick brown fox leaps"),
                     (1, "over the lazy dog today")])
  predictions = ["a quick brown fox jumps", "x", "over a lazy dog today"]
  expected = sacrebleu.corpus_bleu(
      ["a quick brown fox jumps", "over a lazy dog today"],
      [["the quick brown fox jumps", "over the lazy dog today"],
       ["a quick brown fox leaps", None]], tokenize="13a").score
  assert text_metrics.bleu(targets, predictions)["bleu"] == pytest.approx(
      expected)


def test_bleu_edge_cases():
  assert text_metrics.bleu([], []) == {"bleu": 0.0}
  assert text_metrics.bleu(["the cat sat on the mat"], [""])["bleu"] == 0.0
  assert text_metrics.bleu(["the cat sat"], ["dogs run fast"])["bleu"] == 0.0


def test_rouge_hand_computed():
  result = text_metrics.rouge(["the cat sat"], ["the cat"])
  # ROUGE-1: P=1, R=2/3 -> 0.8; ROUGE-2: P=1, R=1/2 -> 2/3.
  assert result["rouge1"] == pytest.approx(80.0)
  assert result["rouge2"] == pytest.approx(100 * 2 / 3)
  assert result["rougeL"] == pytest.approx(80.0)
  assert text_metrics.rouge(["same words here"], ["same words here"]) == {
      k: pytest.approx(100.0) for k in text_metrics.ROUGE_KEYS}
  assert text_metrics.rouge([], []) == {k: 0.0 for k in
                                        text_metrics.ROUGE_KEYS}
  assert text_metrics.rouge(["a b"], [""])["rouge1"] == 0.0


def test_rouge_lsum_splits_sentences_like_t5():
  # Sentences swapped: the single-sequence LCS finds half, the sentence-level
  # (Lsum) LCS finds everything once " . " ends a sentence.
  result = text_metrics.rouge(["a b . c d ."], ["c d . a b ."])
  assert result["rougeL"] == pytest.approx(50.0)
  assert result["rougeLsum"] == pytest.approx(100.0)


def test_rouge_averages_over_examples():
  result = text_metrics.rouge(["x y", "u v"], ["x y", "w z"])
  assert result["rouge1"] == pytest.approx(50.0)


def test_grouped_text_postprocessor():
  fn = postprocessors.GroupedText()
  ex = {"inputs_pretokenized": b"e2e_nlg: name : Aromi"}
  assert fn(b"Aromi is nice.", example=ex, is_target=True) == {
      "value": "Aromi is nice.", "group": "e2e_nlg: name : Aromi"}
  assert fn(b"Aromi.", example=ex) == "Aromi."
