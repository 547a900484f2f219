"""A run's identity: what `MODEL_DIR/config.json` records, and how it is compared.

The record says everything that defines the run, so that eval and infer rebuild it
with no flag repeated and a restart that would change it is refused before anything
in MODEL_DIR is written:

  method         {"factory": "methods.lopa", "arguments": {"length": 10, …,
                  "initializer": {"factory": "prompt_init.class_labels", …}}}
  optimizer      {"factory": "optim.adamw_lopa", "arguments": {…}}
  model_config, initial_checkpoint_path (the bundled model's compares by its name
                  inside prompt_tuning/assets/, so a moved checkout resumes),
                  task, task_feature_lengths, batch_size,
  seed, trainable, prompt_combine (where the prompt goes),
  data_fingerprints {task: {split: {"path", "sha256", "bytes"}}} for local files,
  process_count  (informational: the data stream is a function of the global step
                  only, training/global_stream.py, so a run may resume on another
                  number of processes)

Specs come from gin (the entry points' business: `prompt_tuning/gin_specs.py` reads
them and rebuilds a method from one); this module only compares plain values.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any, Dict, List, Mapping, Optional, Sequence

from prompt_tuning.errors import UserError
from prompt_tuning.tiny import assets

# Fields that must be equal to resume in the same MODEL_DIR; the others (e.g.
# train_steps, eval_period) may change between restarts.
IDENTITY_FIELDS = ("initial_checkpoint_path", "model_config", "method", "trainable",
                   "task", "task_feature_lengths", "batch_size", "seed",
                   "method_spec", "optimizer_spec", "prompt_combine",
                   "data_fingerprints")
# Arguments of a method factory that only matter before training (how the
# parameters start), not for rebuilding a trained method.
INIT_ONLY_ARGUMENTS = ("initializer",)


class IdentityMismatchError(UserError, ValueError):
  """What was asked contradicts a run's recorded identity."""


def contradictions(recorded: Optional[Mapping[str, Any]],
                   given: Optional[Mapping[str, Any]], what: str = "method"
                   ) -> List[str]:
  """`name: given X, recorded Y` for each difference of two method (or optimizer)
  specs (the initializer is ignored: it does not change a trained method)."""
  if not recorded or not given:
    return []
  if recorded.get("factory") != given.get("factory"):
    return [f"{what}: given {given.get('factory')}, recorded {recorded.get('factory')}"]
  out = []
  rec, giv = recorded.get("arguments", {}), given.get("arguments", {})
  for name in sorted(set(rec) | set(giv)):
    if name in INIT_ONLY_ARGUMENTS:
      continue
    if name in rec and name in giv and rec[name] != giv[name]:
      out.append(f"{recorded['factory']}.{name}: given {giv[name]!r}, recorded "
                 f"{rec[name]!r}")
  return out


def check_method_matches(model_dir: str, recorded: Optional[Mapping[str, Any]],
                         given: Optional[Mapping[str, Any]]) -> None:
  """Refuses a method gin / flag that contradicts the recorded method."""
  diffs = contradictions(recorded, given)
  if diffs:
    raise IdentityMismatchError(
        f"{model_dir} was trained with another method configuration: "
        f"{'; '.join(diffs)}. Drop the method gin and flags (the run's own is read "
        f"from {pathlib.Path(model_dir) / 'config.json'}), or evaluate another "
        "MODEL_DIR.")


# ------------------------------------------------------------------------------------
# Data fingerprints.
# ------------------------------------------------------------------------------------


def file_fingerprint(path: str) -> Dict[str, Any]:
  """`{"path", "sha256", "bytes"}` of a local data file."""
  digest = hashlib.sha256()
  size = 0
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
      size += len(chunk)
  return {"path": str(path), "sha256": digest.hexdigest(), "bytes": size}


def fingerprints(files: Mapping[str, Mapping[str, str]]) -> Dict[str, Any]:
  """`{task: {split: fingerprint}}` from `{task: {split: path}}`."""
  return {task: {split: file_fingerprint(path) for split, path in sorted(
      splits.items())} for task, splits in sorted(files.items())}


# ------------------------------------------------------------------------------------
# Comparing records.
# ------------------------------------------------------------------------------------


def normalized(record: Mapping[str, Any]) -> Dict[str, Any]:
  """The record as JSON data (tuples → lists …), as config.json stores it."""
  return json.loads(json.dumps(record, default=str))


def _short(value: Any, limit: int = 160) -> str:
  text = json.dumps(value, sort_keys=True, default=str)
  return text if len(text) <= limit else text[:limit] + "…"


def _data_diffs(old: Mapping, new: Mapping) -> List[str]:
  out = []
  for task in sorted(set(old or {}) | set(new or {})):
    for split in sorted(set((old or {}).get(task, {})) | set((new or {}).get(task, {}))):
      a = (old or {}).get(task, {}).get(split) or {}
      b = (new or {}).get(task, {}).get(split) or {}
      if a.get("sha256") != b.get("sha256"):
        out.append(f"data {task}/{split}: {b.get('path')} (sha256 "
                   f"{str(b.get('sha256'))[:12]}) now vs {a.get('path')} (sha256 "
                   f"{str(a.get('sha256'))[:12]}) when the run started")
  return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any],
                fields: Sequence[str] = IDENTITY_FIELDS) -> List[str]:
  """One phrase per identity field that differs (fields missing from an older
  config.json are not compared)."""
  old, new = normalized(old), normalized(new)
  out = []
  for field in fields:
    if field not in old or field not in new or old[field] == new[field]:
      continue
    if field == "initial_checkpoint_path" and assets.same_model_path(old[field],
                                                                      new[field]):
      continue  # the bundled model, recorded in a checkout that has moved
    if field == "data_fingerprints":
      out += _data_diffs(old[field], new[field])
    elif field in ("method_spec", "optimizer_spec"):
      # A changed initializer does not change a resumed run (its parameters come
      # from the checkpoint), so it is not a difference.
      out += contradictions(old[field], new[field], field.split("_")[0])
    else:
      out.append(f"{field}: {_short(new[field])} now vs {_short(old[field])} in "
                 "config.json")
  return out
