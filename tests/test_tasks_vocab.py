"""The tasks' vocabulary: default path, env var and gin overrides, laziness."""
import pickle

import gin
import pytest
import seqio
import sentencepiece as spm
import tensorflow_datasets as tfds

import tasks
from tasks import local
from tasks import vocab


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  """A second, much smaller SentencePiece model (59 pieces)."""
  prefix = str(tmp_path_factory.mktemp("spm") / "tiny")
  text = [f"the quick brown fox jumps over the lazy dog {i}"
          for i in range(200)]
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(text), model_prefix=prefix, vocab_size=59,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  return prefix + ".model"


@pytest.fixture()
def clean(monkeypatch):
  """No env var and no gin binding, whatever earlier tests in this worker did.

  Entry points run in-process elsewhere in the suite parse gin files (e.g.
  `tiny_bundled.gin` binds the tasks' vocabulary), so start from a clean gin
  config rather than trusting the previous test to have tidied up.
  """
  monkeypatch.delenv(vocab.ENV_VAR, raising=False)
  gin.clear_config()
  yield monkeypatch
  gin.bind_parameter("tasks.vocab.vocabulary_path.path", None)


def test_default_is_the_public_t5_vocabulary(clean):
  tasks.register_all()
  assert vocab.vocabulary_path() == (
      "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model")
  assert vocab.get_vocabulary().extra_ids == 100
  task = seqio.get_mixture_or_task("super_glue_rte_v102")
  assert task.output_features["targets"].vocabulary.sentencepiece_model_file \
      == vocab.DEFAULT_VOCAB_PATH


def test_environment_variable_overrides_default(clean, t5_vocab_path):
  clean.setenv(vocab.ENV_VAR, t5_vocab_path)
  task_vocab = seqio.get_mixture_or_task("glue_sst2_v200").output_features[
      "inputs"].vocabulary
  assert task_vocab.sentencepiece_model_file == t5_vocab_path
  assert task_vocab.vocab_size == 32100
  assert task_vocab.decode(task_vocab.encode("positive")) == "positive"


def test_gin_binding_after_import_wins_and_really_tokenizes(
    clean, t5_vocab_path, tiny_model, tmp_path):
  clean.setenv(vocab.ENV_VAR, t5_vocab_path)
  task_path = tmp_path / "t.jsonl"
  task_path.write_text('{"inputs": "the lazy fox", "targets": "quick dog"}\n')
  local.register_local_task("vocab_probe", train=str(task_path))
  task = seqio.get_mixture_or_task("vocab_probe")

  def first_tokens():
    ds = task.get_dataset({"inputs": 16, "targets": 8}, split="train",
                          shuffle=False)
    return next(iter(tfds.as_numpy(ds)))["inputs"]

  with_t5 = first_tokens()
  gin.parse_config(f"tasks.vocab.vocabulary_path.path = '{tiny_model}'")
  assert vocab.vocabulary_path() == tiny_model
  assert task.output_features["inputs"].vocabulary.vocab_size == 59 + 100
  with_tiny = first_tokens()
  assert max(with_tiny) < 59 < max(with_t5)
  assert list(with_tiny) == (
      seqio.SentencePieceVocabulary(tiny_model).encode("the lazy fox") + [1])
  gin.bind_parameter("tasks.vocab.vocabulary_path.path", None)
  assert list(first_tokens()) == list(with_t5)


def test_equals_a_plain_vocabulary_of_the_same_file(clean, t5_vocab_path):
  clean.setenv(vocab.ENV_VAR, t5_vocab_path)
  plain = seqio.SentencePieceVocabulary(t5_vocab_path, extra_ids=100)
  assert vocab.VOCABULARY == plain
  assert plain == vocab.VOCABULARY
  assert vocab.VOCABULARY != seqio.SentencePieceVocabulary(t5_vocab_path)
  assert vocab.resolved_vocabulary() == plain
  copy = pickle.loads(pickle.dumps(vocab.VOCABULARY))
  assert copy == plain and copy.sentencepiece_model_file == t5_vocab_path


def test_unreadable_path_names_both_fixes(clean, tmp_path):
  clean.setenv(vocab.ENV_VAR, str(tmp_path / "missing.model"))
  with pytest.raises(OSError, match="tasks.vocab.vocabulary_path.path") as e:
    vocab.VOCABULARY.encode("hello")
  assert vocab.ENV_VAR in str(e.value)


def test_public_names():
  tasks.register_all()
  assert tasks.vocabulary_path is vocab.vocabulary_path
  assert tasks.get_vocabulary() is vocab.VOCABULARY
  assert tasks.task_vocabulary("super_glue_rte_v102") is vocab.VOCABULARY
  assert tasks.task_vocabulary("super_glue_v102_proportional") is (
      vocab.VOCABULARY)
