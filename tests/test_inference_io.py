"""inference/io.py: JSONL requests in, records out, the run's summary line."""
import json

import pytest

from prompt_tuning.inference import io as infer_io


def test_parse_line_errors_and_defaults():
  names = ["rte", "sst2"]
  ok = infer_io.parse_line(1, json.dumps({"prompt": "rte", "inputs": "x",
                                          "id": 7}).encode(), names)
  assert (ok.prompt, ok.inputs, ok.extra, ok.error) == ("rte", "x", {"id": 7}, None)
  cases = {b"{bad": "invalid JSON", b"": "empty line", b"[1]": "JSON object",
           b'{"prompt": "rte"}': "missing \"inputs\"",
           b'{"prompt": "rte", "inputs": 3}': "must be a string",
           b'{"inputs": "x"}': "missing \"prompt\"",
           b'{"prompt": "qqp", "inputs": "x"}': "unknown prompt 'qqp'",
           b'\xff{"inputs": "x"}': "not UTF-8"}
  for raw, message in cases.items():
    request = infer_io.parse_line(4, raw, names)
    assert message in request.error, (raw, request.error)
    assert request.error_record() == {"line": 4, "error": request.error}
  single = infer_io.parse_line(2, b'{"inputs": "x"}', ["rte"])
  assert single.prompt == "rte" and single.error is None


def test_read_jsonl_one_request_per_line(tmp_path):
  path = tmp_path / "in.jsonl"
  path.write_bytes(b'{"inputs": "a"}\n\n{"inputs": "b"}\r\n{"inputs": "c"}')
  got = list(infer_io.read_jsonl(str(path), ["p"]))
  assert [r.line for r in got] == [1, 2, 3, 4]
  assert [r.inputs for r in got] == ["a", None, "b", "c"]
  assert infer_io.count_lines(str(path)) == 4
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    list(infer_io.read_jsonl(str(tmp_path / "missing.jsonl"), ["p"]))


def test_summary_line_counts_with_plurals():
  line = infer_io.summary_line(lines=1, predictions=0, errors=2, truncated=1,
                               input_length=16, batches=1, batch_size=8,
                               seconds=3725, output="-")
  assert line == ("infer: 1 line -> stdout: 0 predictions, 2 error records, 1 input "
                  "truncated to 16 tokens; 1 batch of 8 in 1:02:05")


def test_writer_writes_one_json_object_per_line(tmp_path):
  path = tmp_path / "out.jsonl"
  with infer_io.JsonlWriter(str(path)) as writer:
    writer.write({"line": 1, "prediction": "héllo"})
    writer.write({"line": 2, "error": "bad"})
  assert writer.count == 2
  rows = [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines()]
  assert rows == [{"line": 1, "prediction": "héllo"}, {"line": 2, "error": "bad"}]
