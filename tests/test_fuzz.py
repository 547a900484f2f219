"""Property-based tests for what reliability code reads from disk.

Any bytes in `MODEL_DIR/run.lock` (a crash mid-write, a hand edit, another tool) must
leave the lock usable: parsed into a well-typed record, and acquired (taken over)
when no live process holds it. The fuzz tests of the local-file task reader
(`tasks.local.parse_jsonl` / `parse_tsv`) and of the prompt-file loader
(`load_prompt_file`) are in tests/test_tasks_local.py and
tests/test_methods_initializers.py.
"""
import json

import hypothesis
from hypothesis import strategies as st

from prompt_tuning import run_lock

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
