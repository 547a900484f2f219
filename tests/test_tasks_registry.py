"""Every registered task and mixture builds and yields tokenized examples.

Runs under `tfds.testing.mock_data` (random examples with the real TFDS
schemas) with the shared T5 vocabulary; no test here touches the network.
`MockPolicy.USE_CODE` builds each schema from the builder's code: tfds 4.9.10
ships no metadata for these datasets (its AUTO policy falls back to the same),
and the result does not depend on what a machine has in ~/tensorflow_datasets.
"""
import os
import re
import socket

import pytest
import seqio
import tensorflow_datasets as tfds

import tasks
from tasks import glue
from tasks import vocab

SEQUENCE_LENGTH = {"inputs": 48, "targets": 12}
EOS = 1
LOW_DATA = re.compile(r"_n\d+$")


@pytest.fixture(scope="module", autouse=True)
def no_network():
  """Any attempt to open a connection fails the test instead of hanging."""

  def refuse(*args, **kwargs):
    raise AssertionError(f"test tried to use the network: {args!r}")

  saved = (socket.socket.connect, socket.create_connection,
           socket.getaddrinfo)
  socket.socket.connect = refuse
  socket.create_connection = refuse
  socket.getaddrinfo = refuse
  yield
  socket.socket.connect, socket.create_connection, socket.getaddrinfo = saved


@pytest.fixture(scope="module", autouse=True)
def mock_env(t5_vocab_path):
  """Mock TFDS data and point the lazy vocabulary at the shared fixture."""
  saved = os.environ.get(vocab.ENV_VAR)
  os.environ[vocab.ENV_VAR] = t5_vocab_path
  tasks.register_all()  # In case another test reset seqio's registries.
  with tfds.testing.mock_data(
      num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    yield
  if saved is None:
    del os.environ[vocab.ENV_VAR]
  else:
    os.environ[vocab.ENV_VAR] = saved


def _splits_to_check(task: seqio.Task):
  """train + validation for base tasks; one split for cheap variants.

  A `taskless_` twin differs from its base task by one regex step and a
  low-data variant only in its training subset, so one split each covers
  what they add.
  """
  splits = [s for s in ("train", "validation") if s in task.splits]
  if not splits:
    splits = list(task.splits)[:1]
  if LOW_DATA.search(task.name):
    return ["train"]
  if task.name.startswith("taskless_"):
    return splits[-1:]
  return splits


def _first_example(provider, split):
  ds = provider.get_dataset(SEQUENCE_LENGTH, split=split, shuffle=False,
                            num_epochs=1)
  return next(iter(tfds.as_numpy(ds.take(1))))


def _check_tokens(ex, name, split):
  for feature in ("inputs", "targets"):
    tokens = ex[feature]
    assert tokens.dtype.kind == "i", (name, split, feature, tokens.dtype)
    assert tokens.ndim == 1 and 1 <= len(tokens) <= SEQUENCE_LENGTH[feature]
    assert tokens[-1] == EOS, (name, split, feature, tokens)


def _is_variant(name):
  """Twins built from a base task by tasks/variants.py (mt5_, task_index_,
  _examples) or seqio (_sentinel): tests/test_tasks_variants.py and
  tests/test_tasks_t5_parity.py check them against their base."""
  return (name.startswith(("mt5_", "task_index_", "taskless_mt5_")) or
          name.endswith("_examples") or "_sentinel" in name or
          "leave_one_out_" in name or
          # Aliases and same-code twins: the GLUE v002 tasks are the v200
          # ones on TFDS 1.0.0 (test_glue_versions_read_their_tfds_versions).
          re.match(r"(taskless_)?(mrqa_.*_v001|squad_v010$|glue_.*_v002$)",
                   name) is not None)


TASK_NAMES = sorted(
    n for n in seqio.TaskRegistry.names() if (n in tasks.labels._LABELS or
    n.startswith(("glue_", "super_glue_", "taskless_", "squad", "mrqa_",
                  "dpr_", "e2e_nlg", "web_nlg", "dart", "xsum")))
    and "tiny_" not in n  # tiny_*: own vocabulary, see tests/test_tiny_tasks.py
    and not _is_variant(n)
    # Mock data's random answers are never in its random contexts, so the
    # span task drops every example (T5's rule); the parity test covers it.
    and "_span" not in n)


def test_registry_has_the_documented_names():
  expected = [
      "super_glue_boolq_v102", "super_glue_cb_v102", "super_glue_copa_v102",
      "super_glue_multirc_v102", "super_glue_record_v102",
      "super_glue_rte_v102", "super_glue_wic_v102", "super_glue_axb_v102",
      "super_glue_axg_v102", "super_glue_wsc_v102_simple_train",
      "super_glue_wsc_v102_simple_eval", "glue_qqp_v200", "glue_mrpc_v200",
      "glue_sst2_v200", "glue_mrpc_as_qqp_v200", "glue_qqp_as_mrpc_v200",
      "squad_v010_allanswers", "mrqa_bio_asq_v100", "mrqa_drop_v100",
      "mrqa_duo_rc_v100", "mrqa_race_v100", "mrqa_relation_extraction_v100",
      "mrqa_textbook_qa_v100", "mrqa_squad_v100", "mrqa_news_qa_v100",
      "mrqa_trivia_qa_v100", "mrqa_search_qa_v100", "mrqa_hotpot_qa_v100",
      "mrqa_natural_questions_v100", "e2e_nlg", "web_nlg", "dart", "xsum",
      "e2e_nlg_n50", "web_nlg_n100", "dart_n200", "xsum_n500"
  ]
  registered = set(seqio.TaskRegistry.names())
  for name in expected:
    assert name in registered, name
    assert "taskless_" + name in registered, name
  mixtures = set(seqio.MixtureRegistry.names())
  for name in ("super_glue_v102_proportional",
               "super_glue_wsc_and_dev_v102_simple", "super_glue_wsc_v102",
               "glue_qqp_to_mrpc_v200", "glue_mrpc_to_qqp_v200",
               "squad_to_mrqa_v100", "squad_to_mrqa_bio_asq_v100"):
    assert name in mixtures and "taskless_" + name in mixtures, name


def test_glue_versions_read_their_tfds_versions():
  for name in glue.CONFIGS:
    for suffix, version in (("v002", "1.0.0"), ("v200", "2.0.0")):
      for twin in ("", "taskless_"):
        task = seqio.get_mixture_or_task(f"{twin}glue_{name}_{suffix}")
        assert task.source.tfds_dataset.name == f"glue/{name}:{version}"
        v200 = seqio.get_mixture_or_task(f"{twin}glue_{name}_v200")
        assert [getattr(p, "func", p) for p in task.preprocessors] == [
            getattr(p, "func", p) for p in v200.preprocessors]
        assert set(task.splits) == set(v200.splits)


def test_task_splits_match_the_tfds_sources():
  get = seqio.get_mixture_or_task
  assert set(get("super_glue_axb_v102").splits) == {"test"}
  assert set(get("super_glue_axg_v102").splits) == {"test"}
  assert set(get("mrqa_bio_asq_v100").splits) == {"validation", "test"}
  assert set(get("mrqa_news_qa_v100").splits) == {"train", "validation"}
  assert set(get("squad_v010_allanswers").splits) == {"train", "validation"}
  assert set(get("glue_mrpc_as_qqp_v200").splits) == {"validation", "test"}
  assert set(get("web_nlg").splits) == {
      "train", "validation", "test", "test_seen", "test_unseen"}
  assert get("glue_qqp_v200").source.tfds_dataset.name == "glue/qqp:2.0.0"
  assert get("glue_qqp_v002").source.tfds_dataset.name == "glue/qqp:1.0.0"
  assert get("super_glue_rte_v102").source.tfds_dataset.name == (
      "super_glue/rte:1.0.2")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_yields_tokenized_examples(name):
  task = seqio.get_mixture_or_task(name)
  assert task.output_features["inputs"].vocabulary is vocab.VOCABULARY
  assert task.output_features["targets"].add_eos
  prefix = tasks.get_task_prefix(name)
  for split in _splits_to_check(task):
    ex = _first_example(task, split)
    _check_tokens(ex, name, split)
    text = ex["inputs_pretokenized"].decode()
    if prefix:
      assert text.startswith(prefix + " "), (name, text)
    base_prefix = tasks.get_task_prefix(name[len("taskless_"):]) if (
        name.startswith("taskless_")) else None
    if base_prefix:
      assert not text.startswith(base_prefix + " "), (name, text)


@pytest.mark.parametrize("name", sorted(
    n for n in seqio.MixtureRegistry.names()
    if "tiny_" not in n and not _is_variant(n)))
def test_mixture_yields_tokenized_examples(name):
  mixture = seqio.get_mixture_or_task(name)
  split = "train" if "train" in mixture.splits else "validation"
  ex = _first_example(mixture, split)
  _check_tokens(ex, name, split)


def test_super_glue_mixture_uses_t5_rates():
  mixture = seqio.get_mixture_or_task("super_glue_v102_proportional")
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates["super_glue_record_v102"] == 138_854
  assert rates["super_glue_rte_v102"] == 2_490
  assert rates["dpr_v001_simple"] == 1_322
  assert rates["super_glue_axb_v102"] == 0
  assert rates["super_glue_wsc_v102_simple_eval"] == 0
  # Examples-proportional: every rate is a training-set size below T5's cap.
  assert max(rates.values()) < 2**19
  assert len(rates) == 12


def test_low_data_subset_is_sharded_after_selection():
  source = seqio.get_mixture_or_task("e2e_nlg_n50").source
  whole = [x["target_text"] for x in tfds.as_numpy(
      source.get_dataset("train", shuffle=True))]
  shards = [[x["target_text"] for x in tfds.as_numpy(source.get_dataset(
      "train", shard_info=seqio.ShardInfo(i, 2)))] for i in range(2)]
  assert len(whole) == 3  # mock_data's examples, all kept (3 < 50)
  assert sorted(shards[0] + shards[1]) == sorted(whole)
  assert len(shards[0]) == 2 and len(shards[1]) == 1
