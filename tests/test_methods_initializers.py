"""Prompt initializers: ranges, vocabulary sampling, labels, text and files."""
import io
import logging

import flax.linen as nn
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import prompt_files
from prompt_tuning import params as params_lib
from prompt_tuning.methods import initializers as inits
from prompt_tuning.methods.prompt import prompt_tuning
from prompt_tuning.models.config import preset

from conftest import RELEASED_PROMPTS, SHARED_FIXTURES, T5_VOCAB
from methods_testlib import FakeVocab, ids_of_rows as _ids, one_layer_config
from methods_testlib import random_params, row_id_table as _row_id_table

RNG = jax.random.PRNGKey(0)


# ---------------------------------------------------------------- random


def test_random_uniform_covers_the_papers_range():
  prompt = np.asarray(inits.random_uniform()(RNG, (200, 64), None))
  assert prompt.shape == (200, 64) and prompt.dtype == np.float32
  assert prompt.min() >= -0.5 and prompt.max() <= 0.5
  assert prompt.min() < -0.45 and prompt.max() > 0.45  # both halves, not [0, 0.5)
  reference = np.asarray(inits.random_uniform(0.0, 0.5)(RNG, (200, 64), None))
  assert reference.min() >= 0.0


# ---------------------------------------------------------------- vocabulary


def test_sampled_vocab_draws_distinct_frequent_rows():
  rows = inits.sampled_vocab()(RNG, (150, 4), _row_id_table())
  ids = _ids(rows)
  assert len(set(ids)) == 150  # without replacement
  assert ids.max() < 5000  # only the 5,000 most frequent pieces
  other = _ids(inits.sampled_vocab()(jax.random.PRNGKey(1), (150, 4), _row_id_table()))
  assert set(ids) != set(other)


def test_sampled_vocab_refuses_more_rows_than_population():
  with pytest.raises(ValueError, match="population"):
    inits.sampled_vocab(population=10)(RNG, (11, 4), _row_id_table())


def test_class_labels_averages_subtokens_then_falls_back():
  vocab = FakeVocab({"yes": [5001], "not": [5002], "really": [5010]})
  init = inits.class_labels(["yes", "not really"], vocabulary=vocab)
  ids_or_means = np.asarray(init(RNG, (6, 4), _row_id_table()))
  assert ids_or_means[0, 0] == 5001
  assert ids_or_means[1, 0] == pytest.approx((5002 + 5010) / 2)
  rest = _ids(ids_or_means[2:])
  assert rest.max() < 5000 and len(set(rest)) == 4


def test_class_labels_with_t5_vocabulary_file():
  embedding = jax.random.normal(RNG, (32128, 8))
  init = inits.class_labels(["positive", "not_entailment"], vocabulary=str(T5_VOCAB))
  prompt = np.asarray(init(RNG, (3, 8), embedding))
  # SentencePiece ids of the T5 vocabulary: 'positive' is one piece, 'not_entailment'
  # five ('▁not', '_', 'en', 'tail', 'ment').
  assert np.allclose(prompt[0], embedding[1465])
  expected = np.mean(np.asarray(embedding)[[59, 834, 35, 5756, 297]], axis=0)
  assert np.allclose(prompt[1], expected, atol=1e-6)


def test_class_labels_more_labels_than_rows_warns_and_truncates(caplog):
  vocab = FakeVocab({"a": [1], "b": [2], "c": [3]})
  with caplog.at_level(logging.WARNING):
    prompt = inits.class_labels(["a", "b", "c"], vocabulary=vocab)(
        RNG, (2, 4), _row_id_table())
  assert _ids(prompt).tolist() == [1, 2]
  assert "3 labels" in caplog.text


def test_class_labels_needs_labels_or_task():
  with pytest.raises(ValueError, match="CLASS_LABELS"):
    inits.class_labels(vocabulary=FakeVocab({}))(RNG, (2, 4), _row_id_table())
  with pytest.raises(ValueError, match="list of labels"):
    inits.class_labels("positive", vocabulary=FakeVocab({}))(RNG, (2, 4), _row_id_table())


def test_from_text_one_token_per_row():
  vocab = FakeVocab({"classify": [5100, 5101], "this": [5102]})
  prompt = inits.from_text("classify this", vocabulary=vocab)(RNG, (5, 4), _row_id_table())
  ids = _ids(prompt)
  assert ids[:3].tolist() == [5100, 5101, 5102]
  assert ids[3:].max() < 5000


def test_from_text_truncates_long_text():
  vocab = FakeVocab({"w": [5100, 5101, 5102]})
  prompt = inits.from_text("w", vocabulary=vocab)(RNG, (2, 4), _row_id_table())
  assert _ids(prompt).tolist() == [5100, 5101]


# ---------------------------------------------------------------- files


RELEASED = sorted(RELEASED_PROMPTS.glob("*.npy"))


def test_released_prompts_are_present():
  assert [p.name for p in RELEASED] == ["mrpc.npy", "rte.npy", "sst2.npy"]


@pytest.mark.parametrize("path", RELEASED, ids=lambda p: p.stem)
def test_released_prompt_initializes_base_model_abstractly(path):
  """Shape and dtype against T5.1.1 base, without allocating the base model."""
  config = preset("base")
  method = prompt_tuning(length=100, initializer=prompt_files.from_file(path))
  model = method.build(config)
  tokens = jnp.ones((1, 4), jnp.int32)
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(RNG, tokens, tokens)["params"]))
  out = jax.eval_shape(lambda p: method.initialize(RNG, p, config), abstract)
  prompt = out["encoder"]["prompt"]["prompt"]
  assert prompt.shape == (100, 768) and prompt.dtype == jnp.float32
  # The values are the file's.
  values = prompt_files.from_file(path)(RNG, (100, 768), None)
  np.testing.assert_array_equal(np.asarray(values), np.load(path))


def test_released_prompt_runs_in_a_tiny_model_of_the_same_width():
  config = one_layer_config(emb_dim=768)
  method = prompt_tuning(length=100, initializer=prompt_files.from_file(RELEASED[-1]))
  model = method.build(config)
  enc = jnp.array([[5, 6, 7, 1, 0]])
  dec = jnp.array([[0, 3, 4]])
  params = random_params(model, enc, dec)
  loaded = method.initialize(RNG, params, config)
  np.testing.assert_array_equal(loaded["encoder"]["prompt"]["prompt"],
                                np.load(RELEASED[-1]))
  apply = jax.jit(model.apply)
  logits = apply({"params": loaded}, enc, dec)
  assert logits.shape == (1, 3, 128) and np.all(np.isfinite(logits))
  zeroed = params_lib.with_params(loaded, {"encoder/prompt/prompt": jnp.zeros((100, 768))})
  assert not np.allclose(logits, apply({"params": zeroed}, enc, dec))


def test_float64_prompt_is_cast_to_float32():
  path = SHARED_FIXTURES / "prompt_5x256_float64.npy"
  prompt = prompt_files.from_file(path)(RNG, (5, 256), None)
  assert prompt.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(prompt), np.load(path).astype(np.float32))


def test_wrong_shape_names_file_expected_and_found():
  path = SHARED_FIXTURES / "prompt_5x256_float64.npy"
  with pytest.raises(prompt_files.PromptFileError) as error:
    prompt_files.from_file(path)(RNG, (100, 768), None)
  message = str(error.value)
  assert str(path) in message and "[100, 768]" in message and "[5, 256]" in message
  assert isinstance(error.value, ValueError)


@pytest.mark.parametrize("writer, found", [
    (lambda f: np.save(f, np.zeros((2, 3, 4), np.float32)), "rank 3"),
    (lambda f: np.save(f, np.zeros((5,), np.float32)), "rank 1"),
    (lambda f: np.save(f, np.zeros((5, 4), np.int32)), "int32"),
    (lambda f: np.save(f, np.array([{"a": 1}], dtype=object)), "object"),
    (lambda f: np.savez(f, prompt=np.zeros((5, 4))), "not a .npy"),
    (lambda f: f.write(b"prompt = [[0.0]]\n"), "not a .npy"),
    (lambda f: f.write(np.lib.format.magic(1, 0)), "not a .npy"),
])
def test_bad_files_raise_the_documented_error(tmp_path, writer, found):
  path = tmp_path / "prompt.npy"
  with open(path, "wb") as f:
    writer(f)
  with pytest.raises(prompt_files.PromptFileError, match=found) as error:
    prompt_files.read_npy(path, (5, 4))
  assert str(path) in str(error.value)


def test_truncated_file_is_refused(tmp_path):
  buffer = io.BytesIO()
  np.save(buffer, np.ones((5, 4), np.float32))
  path = tmp_path / "cut.npy"
  path.write_bytes(buffer.getvalue()[:-3])
  with pytest.raises(prompt_files.PromptFileError, match="truncated"):
    prompt_files.read_npy(path)


def test_missing_file(tmp_path):
  with pytest.raises(prompt_files.PromptFileError, match="does not exist"):
    prompt_files.read_npy(tmp_path / "nope.npy", (5, 4))


def _npy_header(shape, descr):
  header = {"descr": descr, "fortran_order": False, "shape": shape}
  buffer = io.BytesIO()
  np.lib.format.write_array_header_1_0(buffer, header)
  return np.lib.format.magic(1, 0) + buffer.getvalue()


_headers = st.builds(
    _npy_header,
    st.lists(st.integers(0, 2**40), min_size=0, max_size=3).map(tuple),
    st.sampled_from(["<f4", ">f8", "<f2", "<i4", "|b1", "<c8", "|O"]))


@hypothesis.settings(max_examples=150, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(data=st.one_of(
    st.binary(max_size=512),
    st.tuples(_headers, st.binary(max_size=256)).map(lambda t: t[0] + t[1])))
def test_any_bytes_load_or_raise_prompt_file_error(tmp_path, data):
  path = tmp_path / "fuzz.npy"
  path.write_bytes(data)
  try:
    prompt = prompt_files.read_npy(path)
  except prompt_files.PromptFileError:
    return
  assert prompt.dtype == np.float32 and prompt.ndim == 2
