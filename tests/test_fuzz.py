"""Property-based tests for what reliability code reads from disk.

Any bytes in `MODEL_DIR/run.lock` (a crash mid-write, a hand edit, another tool) must
leave the lock usable: parsed into a well-typed record, and acquired (taken over)
when no live process holds it. Any bytes as a Hugging Face `model.safetensors` (cut
short, overwritten in the header or the data) either load or raise
`CheckpointError` naming the file. The fuzz tests of the local-file task reader
(`tasks.local.parse_jsonl` / `parse_tsv`) and of the prompt-file loader
(`load_prompt_file`) are in tests/test_tasks_local.py and
tests/test_methods_initializers.py.
"""
import json

import hypothesis
import pytest
from hypothesis import strategies as st

from prompt_tuning.run_dir import lock as run_lock

_records = st.dictionaries(
    st.sampled_from(["pid", "host", "started", "argv", "other"]),
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=20),
              st.floats(allow_nan=True), st.lists(st.integers(), max_size=3)),
    max_size=5).map(lambda d: json.dumps(d).encode())

_lock_bytes = st.one_of(st.binary(max_size=300), _records)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(_lock_bytes)
def test_any_lock_file_bytes_parse_to_a_well_typed_record(data):
  record = run_lock.parse_record(data)
  assert isinstance(record, dict)
  if record:
    assert record["pid"] is None or (isinstance(record["pid"], int) and
                                     not isinstance(record["pid"], bool))
    assert record["host"] is None or isinstance(record["host"], str)
    assert isinstance(record["started"], str) and isinstance(record["argv"], str)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(_lock_bytes)
def test_any_lock_file_without_a_live_holder_is_acquired(tmp_path_factory, data):
  model_dir = tmp_path_factory.mktemp("lock")
  (model_dir / run_lock.LOCK_FILE).write_bytes(data)
  lock = run_lock.ModelDirLock(str(model_dir)).acquire()
  try:
    assert run_lock.parse_record(
        (model_dir / run_lock.LOCK_FILE).read_bytes())["pid"] is not None
  finally:
    lock.release()
  assert (model_dir / run_lock.LOCK_FILE).read_bytes() == b""


# ------------------------------------------------------------------ safetensors


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny valid Hugging Face checkpoint directory and its weight file's bytes."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning.checkpoints import tree  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.preset("tiny").replace(
      vocab_size=8, emb_dim=4, num_heads=1, head_dim=2, mlp_dim=4,
      num_encoder_layers=1, num_decoder_layers=1, relative_attention_num_buckets=4,
      relative_attention_max_distance=8)
  params = {}
  for name, shape in tree.expected_shapes(config).items():
    node = params
    *parents, last = name.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[last] = np.ones(shape, np.float32)
  path = checkpoints.save_huggingface(tmp_path_factory.mktemp("hf") / "hf", params,
                                      config)
  return path, (path / "model.safetensors").read_bytes()


def _mutations(valid: bytes):
  """Valid bytes cut short, or with a few bytes overwritten (header or data)."""
  return st.one_of(
      st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
      st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)),
               min_size=1, max_size=4).map(lambda edits: _edit(valid, edits)))


def _edit(data: bytes, edits) -> bytes:
  out = bytearray(data)
  for position, value in edits:
    out[position] = value
  return bytes(out)


@hypothesis.settings(max_examples=200, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(st.data())
def test_any_safetensors_bytes_load_or_raise_checkpoint_error(hf_dir, data):
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  path, valid = hf_dir
  blob = data.draw(st.one_of(st.binary(max_size=200), _mutations(valid)))
  (path / "model.safetensors").write_bytes(blob)
  try:
    checkpoints.load(path)
  except checkpoints.CheckpointError:
    pass
  finally:
    (path / "model.safetensors").write_bytes(valid)
