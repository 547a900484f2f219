"""The bundled tiny model's corpus, objectives and pretraining batches."""
import itertools

import numpy as np
import pytest

from prompt_tuning.tiny import corpus, objectives, pretraining, spm


def test_streams_are_deterministic_and_seed_dependent():
  a = list(itertools.islice(corpus.documents(3, "train"), 5))
  b = list(itertools.islice(corpus.documents(3, "train"), 5))
  c = list(itertools.islice(corpus.documents(4, "train"), 5))
  assert a == b
  assert a != c


def test_splits_are_disjoint_by_sentence_text():
  seen = {}
  for split in corpus.SPLITS:
    texts = {corpus.sentence_text(w)
             for w in itertools.islice(corpus.sentences(0, split), 300)}
    assert all(corpus.split_of(t) == split for t in texts)
    seen[split] = texts
  assert not seen["train"] & seen["validation"]
  assert not seen["train"] & seen["test"]


def test_tasks_share_inputs_and_differ_by_prefix_only():
  words = "the red happy dog sees a cake today".split()
  examples = {t: corpus.task_example(t, words) for t in corpus.TASKS}
  assert examples["sentiment"] == {
      "inputs": "sentiment: the red happy dog sees a cake today .",
      "targets": "positive"}
  assert examples["mood"]["targets"] == "happy"
  assert examples["topic"]["targets"] == "animal"
  assert examples["count"]["targets"] == "eight"
  assert examples["subject"]["targets"] == "dog"
  assert examples["object"]["targets"] == "cake"
  assert examples["last"]["targets"] == "today"
  taskless = {corpus.task_example(t, words, with_prefix=False)["inputs"]
              for t in corpus.TASKS}
  assert taskless == {"the red happy dog sees a cake today ."}


def test_every_sentence_has_exactly_one_mood_word():
  for words in itertools.islice(corpus.sentences(1, "train"), 500):
    moods = [w for w in words if w in corpus.POSITIVE + corpus.NEGATIVE]
    assert len(moods) == 1
    assert corpus.TASKS["sentiment"](words) in corpus.LABELS["sentiment"]


def test_sentiment_labels_are_balanced():
  labels = [ex["targets"] for ex in itertools.islice(
      corpus.task_examples("sentiment", "validation"), 1000)]
  assert 0.4 < labels.count("positive") / len(labels) < 0.6


@pytest.mark.parametrize("length", [8, 20, 31, 64])
def test_noise_mask_density_and_spans(length):
  rng = np.random.default_rng(0)
  mask = objectives.noise_mask(length, rng)
  assert mask.sum() == min(max(round(length * 0.15), 1), length - 1)
  assert not mask[0]  # starts with a kept span, like T5
  starts = np.sum(mask[1:] & ~mask[:-1])
  assert starts == max(min(round(mask.sum() / 3), mask.sum()), 1)


def test_span_corruption_round_trips_to_the_original():
  rng = np.random.default_rng(1)
  tokens = list(range(10, 42))
  inputs, targets = objectives.span_corruption(tokens, rng, sentinel_start=499)
  assert inputs[-1] == targets[-1] == objectives.EOS_ID
  sentinels = [t for t in inputs if t > 400]
  assert sentinels == list(range(499, 499 - len(sentinels), -1))
  # Put each target span back in place of its sentinel.
  spans, current = {}, None
  for t in targets[:-1]:
    if t > 400:
      current = t
      spans[current] = []
    else:
      spans[current].append(t)
  rebuilt = [x for t in inputs[:-1] for x in (spans[t] if t > 400 else [t])]
  assert rebuilt == tokens


def test_prefix_lm_splits_text():
  rng = np.random.default_rng(2)
  tokens = list(range(5, 25))
  inputs, targets = objectives.prefix_lm(tokens, rng)
  assert inputs[:-1] + targets[:-1] == tokens
  assert inputs[:-1] and targets[:-1]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("spm") / "sp.model"
  spm.train(corpus.vocabulary_text(0, 400), str(path))
  return pretraining.Tokenizer(str(path))


def test_vocabulary_is_deterministic_and_t5_shaped(tokenizer, tmp_path):
  data = spm.train(corpus.vocabulary_text(0, 400), str(tmp_path / "again.model"))
  assert (tmp_path / "again.model").read_bytes() == data
  assert tokenizer.processor.serialized_model_proto() == data
  p = tokenizer.processor
  assert (p.pad_id(), p.eos_id(), p.unk_id(), p.bos_id()) == (0, 1, 2, -1)
  assert tokenizer.sentinel_start == tokenizer.pieces + 99
  for word in ("positive", "negative", "happy", "dog"):
    assert len(tokenizer.encode(word)) == 1, word


@pytest.mark.parametrize("objective", pretraining.OBJECTIVES)
def test_batches_have_fixed_shapes_and_shifted_targets(tokenizer, objective):
  batches = pretraining.stream(objective, tokenizer, 0, "train", 16)
  first, second = next(batches), next(batches)
  again = next(pretraining.stream(objective, tokenizer, 0, "train", 16))
  np.testing.assert_array_equal(first["encoder_input_tokens"],
                                again["encoder_input_tokens"])
  assert first["encoder_input_tokens"].shape == second["encoder_input_tokens"].shape
  tgt, dec = first["decoder_target_tokens"], first["decoder_input_tokens"]
  np.testing.assert_array_equal(dec[:, 1:], tgt[:, :-1])
  assert (dec[:, 0] == 0).all()
  np.testing.assert_array_equal(first["decoder_loss_weights"], tgt > 0)
  # Every example ends in EOS within its shape (nothing was cut).
  for row in list(first["encoder_input_tokens"]) + list(tgt):
    assert objectives.EOS_ID in row


def test_task_batch_with_and_without_prefix(tokenizer):
  with_p = pretraining.task_batch(tokenizer, "sentiment", "validation", 4, True)
  without = pretraining.task_batch(tokenizer, "sentiment", "validation", 4, False)
  np.testing.assert_array_equal(with_p["decoder_target_tokens"],
                                without["decoder_target_tokens"])
  prefix = tokenizer.encode("sentiment:")
  row = list(with_p["encoder_input_tokens"][0])
  assert row[:len(prefix)] == prefix
  assert list(without["encoder_input_tokens"][0][:5]) == row[len(prefix):
                                                            len(prefix) + 5]
  assert tokenizer.decode(with_p["decoder_target_tokens"][0]) in (
      "positive", "negative")
