"""Prompt ensembling vs its members (Lester et al. 2021, section 7, Table 3).

N prompts trained on one task are served from one frozen model by
`prompt_tuning.infer` (a prompt bank; the ensemble is one more served name whose
answer is the majority vote of the N decoded labels). Every example of a task split
is sent to each member and to the ensemble, in one infer run; accuracy is exact
match of the prediction with the target text.

  result = ensemble_eval({'p0': dir0, …, 'p4': dir4}, 'taskless_tiny_topic',
                         model_gin_files=['models/tiny_bundled.gin'],
                         gin_files=['demo/tiny_common.gin'], output_dir='/tmp/ens')
  result['ensemble'], result['members'], result['mean'], result['best']
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Sequence

from prompt_tuning.research.runs import GinRun, binding

ENSEMBLE = "ensemble"


def write_requests(task: str, split: str, names: Sequence[str], path: pathlib.Path,
                   max_examples: Optional[int] = None) -> int:
  """JSONL requests: each example of the split once per served name; returns the
  number of examples. Lines carry `targets` and `example` (copied to the output)."""
  from prompt_tuning.inference import io as infer_io  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  count = 0
  with open(path, "w") as f:
    for request in infer_io.read_task(task, split, names[0], max_examples):
      count += 1
      for name in names:
        f.write(json.dumps({"prompt": name, "inputs": request.inputs,
                            "targets": request.extra.get("targets"),
                            "example": count}) + "\n")
  return count


def accuracies(records: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
  """Exact-match accuracy (%) of `prediction` vs `targets` per served name."""
  hits: Dict[str, List[bool]] = {}
  for r in records:
    if "error" in r:
      raise ValueError(f"infer returned an error record: {r}")
    hits.setdefault(r["prompt"], []).append(
        str(r["prediction"]).strip() == str(r["targets"]).strip())
  return {name: 100.0 * sum(h) / len(h) for name, h in hits.items()}


def infer_run(prompts: Mapping[str, str], requests: str, predictions: str, *,
              model_gin_files: Sequence[str] = (), gin_files: Sequence[str] = (),
              bindings: Sequence[str] = ()) -> GinRun:
  """The `prompt_tuning.infer` call serving the prompts and their ensemble."""
  return GinRun("infer", list(model_gin_files) + ["runs/prompt_infer.gin"] +
                list(gin_files),
                [binding("PROMPT_FILES", {k: str(v) for k, v in prompts.items()}),
                 binding("ENSEMBLES", {ENSEMBLE: list(prompts)}),
                 binding("INFER_INPUT", str(requests)),
                 binding("INFER_OUTPUT", str(predictions)),
                 binding("INFER_CHECKPOINT", "latest")] + list(bindings))


def ensemble_eval(prompts: Mapping[str, str], task: str, *, output_dir: str,
                  split: str = "validation", max_examples: Optional[int] = None,
                  model_gin_files: Sequence[str] = (), gin_files: Sequence[str] = (),
                  bindings: Sequence[str] = ()) -> Dict[str, Any]:
  """Serves each prompt and the ensemble on the split; returns accuracies.

  Returns:
    {'members': {name: accuracy}, 'ensemble': accuracy, 'mean', 'best', 'worst',
     'examples', 'command'}.
  """
  if len(prompts) < 2:
    raise ValueError(f"An ensemble needs at least 2 prompts; got {list(prompts)}.")
  if ENSEMBLE in prompts:
    raise ValueError(f"{ENSEMBLE!r} is the ensemble's served name; rename that prompt.")
  out = pathlib.Path(output_dir)
  requests, predictions = out / "requests.jsonl", out / "predictions.jsonl"
  count = write_requests(task, split, list(prompts) + [ENSEMBLE], requests,
                         max_examples)
  run = infer_run(prompts, str(requests), str(predictions),
                  model_gin_files=model_gin_files, gin_files=gin_files,
                  bindings=bindings)
  run.run_in_process()
  records = [json.loads(line) for line in predictions.read_text().splitlines()]
  acc = accuracies(records)
  members = {name: acc[name] for name in prompts}
  values = list(members.values())
  result = {"task": task, "split": split, "examples": count, "members": members,
            "ensemble": acc[ENSEMBLE], "mean": sum(values) / len(values),
            "best": max(values), "worst": min(values), "command": run.command()}
  (out / "ensemble.json").write_text(json.dumps(result, indent=2) + "\n")
  return result
