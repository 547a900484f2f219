"""Code generation in MBPP's format, scored by running the code (pass@1).

Data: local JSONL files, one problem per line in MBPP's released format:

  {"task_id": 11, "text": "Write a python function to ...",
   "code": "def f(...):\\n    ...",
   "test_list": ["assert f(1) == 2", ...],
   "test_setup_code": ""}                     (optional; "challenge_test_list" ignored)

Format:
  inputs   "<text>\\nYour code should pass these tests:\\n<test 1>\\n<test 2>..."
           (the task statement and its tests, as in the MBPP paper's prompt)
  targets  the reference solution `code`.

Metric `pass@1` (`PassAtK`): each generated program, after `extract_code` (code
fences and a trailing "[DONE]" removed), runs as `test_setup_code + program +
tests` in `tasks.sandbox` (separate process, time and memory limits, no network,
read-only file system but a temporary directory); it passes when every assert
holds and it ran to the end. With several generations per problem (the same
task_id repeated) pass@k uses the unbiased estimator of Chen et al. (2021)
averaged over problems. `timeouts` counts generations stopped by the time limit.

In gin:
  MIXTURE_OR_TASK_NAME = @tasks.code.register_mbpp_task()
  tasks.code.register_mbpp_task.name = "mbpp"
  tasks.code.register_mbpp_task.train = "/data/mbpp/train.jsonl"
  tasks.code.register_mbpp_task.validation = "/data/mbpp/validation.jsonl"

`mbpp_sample` (four problems written for this project, in MBPP's format) is always
registered, for smoke tests and `python -m tasks.list`.
"""
import collections
import json
import math
import re
from typing import Dict, List, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from tasks import postprocessors
from tasks import registry
from tasks import sandbox
from tasks.local import LocalDataError

Problem = Dict[str, object]

SAMPLE = [
    {"task_id": 1, "text": "Write a function to return the sum of the squares of a "
     "list of integers.", "code": "def sum_squares(xs):\n    return sum(x * x for x "
     "in xs)", "test_list": ["assert sum_squares([1, 2, 3]) == 14",
                             "assert sum_squares([]) == 0",
                             "assert sum_squares([-4]) == 16"], "test_setup_code": ""},
    {"task_id": 2, "text": "Write a function to check whether a string reads the "
     "same forwards and backwards, ignoring case.", "code": "def is_palindrome(s):\n"
     "    s = s.lower()\n    return s == s[::-1]",
     "test_list": ["assert is_palindrome('Level')", "assert not is_palindrome('abc')",
                   "assert is_palindrome('')"], "test_setup_code": ""},
    {"task_id": 3, "text": "Write a function to count the vowels in a string.",
     "code": "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)",
     "test_list": ["assert count_vowels('banana') == 3",
                   "assert count_vowels('xyz') == 0",
                   "assert count_vowels('AEIOU') == 5"], "test_setup_code": ""},
    {"task_id": 4, "text": "Write a function to find the second largest distinct "
     "number in a list.", "code": "def second_largest(xs):\n    return "
     "sorted(set(xs))[-2]", "test_list": ["assert second_largest([1, 5, 3, 5]) == 3",
                                          "assert second_largest([2, 1]) == 1"],
     "test_setup_code": ""},
]


def _fail(source: str, line: int, problem: str) -> LocalDataError:
  return LocalDataError(f"{source}:{line}: {problem}")


def parse_problems(text: str, source: str = "<text>") -> List[Problem]:
  """Parses MBPP JSONL text; every line must be a valid problem.

  Raises:
    LocalDataError: naming the file and line (bad JSON, missing or mistyped field).
  """
  problems = []
  for number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      raise _fail(source, number, "empty line; every line must be a problem.")
    try:
      record = json.loads(line)
    except ValueError as e:
      raise _fail(source, number, f"not valid JSON ({e}).") from None
    if not isinstance(record, dict):
      raise _fail(source, number, "expected a JSON object.")
    for field, kind in (("text", str), ("code", str), ("test_list", list)):
      if not isinstance(record.get(field), kind):
        raise _fail(source, number, f'"{field}" must be a {kind.__name__} '
                    "(MBPP format: text, code, test_list, task_id).")
    if not record["test_list"] or not all(isinstance(t, str) for t in
                                          record["test_list"]):
      raise _fail(source, number, '"test_list" must be a non-empty list of strings.')
    setup = record.get("test_setup_code", "") or ""
    if not isinstance(setup, str):
      raise _fail(source, number, '"test_setup_code" must be a string.')
    problems.append({"task_id": str(record.get("task_id", f"{source}:{number}")),
                     "text": record["text"], "code": record["code"],
                     "tests": "\n".join(record["test_list"]), "setup": setup})
  if not problems:
    raise LocalDataError(f"{source}: no problems.")
  return problems


def read_problems(path: str) -> List[Problem]:
  if not tf.io.gfile.exists(path):
    raise LocalDataError(f"{path}: no such file.")
  with tf.io.gfile.GFile(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise LocalDataError(f"{path}: not valid UTF-8 ({e.reason}).") from None
  return parse_problems(text, source=path)


def prompt(problem: Problem) -> str:
  return f"{problem['text']}\nYour code should pass these tests:\n{problem['tests']}"


_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.S)


def extract_code(text) -> str:
  """The program in a generation: inside the first ``` fence if any, up to [DONE]."""
  text = postprocessors.as_text(text)
  fenced = _FENCE.search(text)
  if fenced:
    text = fenced.group(1)
  return text.split("[DONE]", 1)[0].strip("\n")


def postprocess(text, example=None, is_target=False):
  """Predictions -> program text; targets -> what the metric needs to run tests."""
  if not is_target:
    return extract_code(text)
  field = lambda k: postprocessors.as_text(example[k])
  return {"task_id": field("task_id"), "tests": field("tests"),
          "setup": field("setup"), "code": postprocessors.as_text(text)}


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
  """Chen et al.'s unbiased pass@k: 1 - C(n - c, k) / C(n, k) (1.0 if n - c < k)."""
  if not 0 <= num_correct <= num_samples or k < 1 or k > num_samples:
    raise ValueError(f"pass@{k} needs 1 <= k <= n and 0 <= c <= n; got n={num_samples}, "
                     f"c={num_correct}.")
  if num_samples - num_correct < k:
    return 1.0
  return 1.0 - math.prod(1.0 - k / i for i in range(num_samples - num_correct + 1,
                                                     num_samples + 1))


def program(target: Dict[str, str], prediction: str) -> str:
  return f"{target['setup']}\n{prediction}\n\n{target['tests']}\n"


class PassAtK:
  """Metric: execution-based pass@k in percent (see the module docstring)."""

  def __init__(self, k: int = 1, limits: sandbox.Limits = sandbox.Limits()):
    self.k = k
    self.limits = limits
    self.metric_names = (f"pass@{k}", "timeouts")
    self.__name__ = f"pass_at_{k}"

  def __call__(self, targets: Sequence[Dict[str, str]], predictions: Sequence[str]):
    if len(targets) != len(predictions):
      raise ValueError(f"Got {len(targets)} targets but {len(predictions)} predictions.")
    samples = collections.defaultdict(lambda: [0, 0])  # task_id -> [n, correct]
    timeouts = 0
    for target, prediction in zip(targets, predictions):
      result = sandbox.run_program(program(target, prediction), self.limits)
      timeouts += result.status == "timeout"
      counts = samples[target["task_id"]]
      counts[0] += 1
      counts[1] += result.passed
    scores = [pass_at_k(n, c, self.k) for n, c in samples.values() if n >= self.k]
    if len(scores) < len(samples):
      raise ValueError(f"pass@{self.k} needs at least {self.k} generations per problem.")
    value = 100.0 * sum(scores) / len(scores) if scores else 0.0
    return {f"pass@{self.k}": value, "timeouts": timeouts}


def _dataset_fn(problems: Dict[str, List[Problem]]):
  def dataset_fn(split: str, shuffle_files: bool, seed=None):
    del shuffle_files, seed
    rows = problems[split]
    return tf.data.Dataset.from_tensor_slices({
        "inputs": [prompt(p) for p in rows], "targets": [p["code"] for p in rows],
        **{k: [p[k] for p in rows] for k in ("task_id", "tests", "setup")}})
  return dataset_fn


def _add_task(name: str, problems: Dict[str, List[Problem]],
              limits: sandbox.Limits) -> str:
  registry.add_task(
      name,
      source=seqio.FunctionDataSource(
          _dataset_fn(problems), splits=list(problems),
          num_input_examples={s: len(p) for s, p in problems.items()}),
      text_preprocessors=[],
      metric_fns=[PassAtK(1, limits)],
      postprocess_fn=postprocess,
      taskless=False)
  return name


_REGISTERED: Dict[str, tuple] = {}


@gin.configurable(module="tasks.code")
def register_mbpp_task(name: str = gin.REQUIRED, train: Optional[str] = None,
                       validation: Optional[str] = None, test: Optional[str] = None,
                       timeout_seconds: float = 10.0,
                       memory_bytes: int = 1 << 30) -> str:
  """Registers a task over MBPP-format JSONL files and returns its name.

  Raises:
    LocalDataError: no split given, or a file is missing or malformed.
  """
  files = {s: p for s, p in (("train", train), ("validation", validation),
                             ("test", test)) if p}
  if not files:
    raise LocalDataError(f"register_mbpp_task({name!r}) needs at least one of "
                         "train=, validation=, test= (JSONL paths).")
  key = (tuple(sorted(files.items())), timeout_seconds, memory_bytes)
  if _REGISTERED.get(name) == key and name in seqio.TaskRegistry.names():
    return name
  problems = {s: read_problems(p) for s, p in files.items()}
  _add_task(name, problems, sandbox.Limits(timeout_seconds=timeout_seconds,
                                           memory_bytes=memory_bytes))
  _REGISTERED[name] = key
  return name


def register() -> None:
  """Registers `mbpp_sample` (the bundled problems as train and validation)."""
  problems = parse_problems("\n".join(json.dumps(p) for p in SAMPLE), "mbpp_sample")
  _add_task("mbpp_sample", {"train": problems, "validation": problems},
            sandbox.Limits())
