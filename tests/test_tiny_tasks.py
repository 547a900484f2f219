"""tasks/tiny.py: the bundled toy tasks, their taskless twins, labels and metrics."""
import seqio

import tasks
from prompt_tuning.tiny import assets, corpus
from tasks import tiny

LENGTHS = tiny.FEATURE_LENGTHS


def _examples(name, split="validation", n=4):
  ds = seqio.get_mixture_or_task(name).get_dataset(
      LENGTHS, split=split, shuffle=False, num_epochs=1)
  return list(ds.take(n).as_numpy_iterator())


def test_every_task_has_a_taskless_twin_and_mixtures():
  tiny.register()  # in case another test reset seqio's registries
  names = set(seqio.TaskRegistry.names())
  for task in corpus.TASKS:
    assert f"tiny_{task}" in names and f"taskless_tiny_{task}" in names
  mixtures = set(seqio.MixtureRegistry.names())
  assert {"tiny_multitask", "taskless_tiny_multitask"} <= mixtures
  assert len(seqio.get_mixture_or_task("tiny_multitask").tasks) == len(corpus.TASKS)


def test_labels_and_prefixes_are_registered():
  assert tasks.get_label_strings("taskless_tiny_sentiment") == ["positive",
                                                                "negative"]
  assert tasks.get_label_strings("tiny_topic") == list(corpus.NOUNS)
  assert tasks.get_label_strings("tiny_count") is None
  assert tasks.get_task_prefix("tiny_sentiment") == "sentiment:"
  assert tasks.get_task_prefix("taskless_tiny_sentiment") is None


def test_taskless_twin_drops_only_the_task_word():
  tiny.register()
  with_prefix = _examples("tiny_sentiment")
  taskless = _examples("taskless_tiny_sentiment")
  for a, b in zip(with_prefix, taskless):
    text_a = a["inputs_pretokenized"].decode()
    assert text_a == "sentiment: " + b["inputs_pretokenized"].decode()
    assert a["targets_pretokenized"] == b["targets_pretokenized"]
    assert a["targets_pretokenized"].decode() in ("positive", "negative")
    # Tokenized with the bundled vocabulary, EOS appended, nothing cut.
    assert list(b["inputs"]) == tiny.VOCABULARY.encode(
        b["inputs_pretokenized"].decode()) + [1]
    assert list(b["targets"])[-1] == 1


def test_tasks_use_the_bundled_vocabulary():
  task = seqio.get_mixture_or_task("taskless_tiny_sentiment")
  vocab = task.output_features["inputs"].vocabulary
  assert vocab.sentencepiece_model_file == str(assets.VOCAB_PATH)
  assert vocab.extra_ids == 100
  assert len(vocab.encode("positive")) == 1


def test_splits_are_fixed_and_disjoint():
  tiny.register()
  first = [e["inputs_pretokenized"] for e in _examples("taskless_tiny_topic", n=8)]
  again = [e["inputs_pretokenized"] for e in _examples("taskless_tiny_topic", n=8)]
  assert first == again
  for text in first:
    assert corpus.split_of(text.decode()) == "validation"
  train = [e["inputs_pretokenized"] for e in
           _examples("taskless_tiny_topic", split="train", n=8)]
  assert not set(train) & set(first)


def test_metrics_score_labels_and_words():
  sentiment = seqio.get_mixture_or_task("taskless_tiny_sentiment")
  post = sentiment.postprocess_fn
  targets = [post(t, is_target=True) for t in (b"positive", b"negative",
                                                b"positive")]
  predictions = [post(p) for p in (b"positive", b"positive", b"happy")]
  scores = {}
  for fn in sentiment.metric_fns:
    scores.update(fn(targets, predictions))
  assert abs(scores["accuracy"] - 100.0 / 3) < 1e-9
  assert scores["invalid_predictions"] == 1
  subject = seqio.get_mixture_or_task("tiny_subject")
  scores = subject.metric_fns[0](
      [subject.postprocess_fn(b"dog", is_target=True)] * 2,
      [subject.postprocess_fn(b"dog"), subject.postprocess_fn(b"cat")])
  assert scores["accuracy"] == 50.0


def test_seqio_and_pretraining_tokenize_alike():
  from prompt_tuning.tiny import pretraining  # pylint: disable=g-import-not-at-top
  tokenizer = pretraining.Tokenizer(str(assets.VOCAB_PATH))
  for example in _examples("tiny_count", n=5):
    text = example["inputs_pretokenized"].decode()
    assert tokenizer.encode(text) == list(example["inputs"][:-1])
  assert tokenizer.sentinel_start == tiny.VOCABULARY.vocab_size - 1


def test_count_sentinel_twin_uses_the_pretraining_sentinel():
  """The objective ablation's "span corruption + sentinel" task: <extra_id_0> (the
  id span corruption used for its first span) ends the inputs and leads the
  targets; predictions are scored without it."""
  from prompt_tuning.tiny import pretraining  # pylint: disable=g-import-not-at-top
  from tasks import tiny_shift  # pylint: disable=g-import-not-at-top
  tiny_shift.register()
  base_name = tiny_shift.task_name("count", "source")
  plain = _examples(base_name, n=2)
  twin = _examples(base_name + "_1_sentinel", n=2)
  sentinel = pretraining.Tokenizer(str(assets.VOCAB_PATH)).sentinel_start
  task = seqio.get_mixture_or_task(base_name + "_1_sentinel")
  vocabulary = task.output_features["targets"].vocabulary
  for a, b in zip(plain, twin):
    assert list(b["inputs"]) == list(a["inputs"][:-1]) + [sentinel, 1]
    assert list(b["targets"]) == [sentinel] + list(a["targets"])
    text = vocabulary.decode([int(t) for t in b["targets"]])
    assert task.postprocess_fn(text, example=b, is_target=False) == (
        vocabulary.decode([int(t) for t in a["targets"]]))
