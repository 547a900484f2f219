"""Gin registrations (prompt_tuning/configurables.py): label and text initializers
resolved from a task, and the default vocabulary."""
import sys
import types

import jax
import numpy as np
import pytest

from prompt_tuning import configurables

from conftest import T5_VOCAB
from methods_testlib import FakeVocab, ids_of_rows as _ids, row_id_table as _row_id_table

RNG = jax.random.PRNGKey(0)


@pytest.fixture
def fake_tasks(monkeypatch):
  """Stand-ins for `tasks` and `seqio` (importing TensorFlow costs ~10 s): one task
  'toy' with labels and its own inputs/targets vocabularies."""
  vocabularies = {"inputs": FakeVocab({"hello": [5300]}),
                  "targets": FakeVocab({"yes": [5201], "no": [5202]})}
  feature = lambda v: types.SimpleNamespace(vocabulary=v)
  task = types.SimpleNamespace(
      output_features={k: feature(v) for k, v in vocabularies.items()})
  fake_seqio = types.SimpleNamespace(
      get_mixture_or_task=lambda name: {"toy": task}[name])
  fake_tasks_module = types.SimpleNamespace(
      get_label_strings=lambda name: {"toy": ["yes", "no"], "qa": None}[name],
      vocabulary_path=lambda: str(T5_VOCAB))
  monkeypatch.setitem(sys.modules, "seqio", fake_seqio)
  monkeypatch.setitem(sys.modules, "tasks", fake_tasks_module)


def test_class_labels_from_a_task_use_its_labels_and_targets_vocabulary(fake_tasks):
  prompt = configurables.class_labels(task="toy")(RNG, (3, 4), _row_id_table())
  assert _ids(prompt)[:2].tolist() == [5201, 5202]
  with pytest.raises(ValueError, match="no class labels"):
    configurables.class_labels(task="qa")(RNG, (3, 4), _row_id_table())


def test_from_text_uses_the_tasks_inputs_vocabulary(fake_tasks):
  prompt = configurables.from_text("hello", task="toy")(RNG, (2, 4), _row_id_table())
  assert _ids(prompt)[0] == 5300


def test_without_task_or_vocabulary_the_default_vocabulary_is_used(fake_tasks):
  table = jax.random.normal(RNG, (32128, 4))
  prompt = configurables.class_labels(["positive"])(RNG, (1, 4), table)
  np.testing.assert_array_equal(prompt[0], table[1465])


