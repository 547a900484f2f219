"""The parameter tree and its utilities (imports nothing of ours).

A `Params` is a nested dict of arrays in the T5X layout, e.g.
`{'encoder': {'prompt': {'prompt': x}}}`; paths are `/`-joined
(`'encoder/prompt/prompt'`) and trainable regexes fully match paths (T5X semantics).

  flatten / unflatten          nested ↔ `{path: array}`
  get_param / with_params /    read, set, drop a path (copies; the input is untouched)
  without_params
  matches(path, regexes)       full-match of any regex
  split(tree, regexes)         → (trainable, frozen) nested subtrees
  merge(trainable, frozen)     the full tree again
"""
from __future__ import annotations

import re
from typing import Any, Dict, Sequence, Tuple

import flax
import flax.linen as nn

Params = Dict[str, Any]  # nested dict of arrays, T5X layout


def flatten(params: Params) -> Dict[str, Any]:
  """`{'encoder': {'prompt': {'prompt': x}}}` → `{'encoder/prompt/prompt': x}`."""
  return flax.traverse_util.flatten_dict(params, sep="/")


def unflatten(flat: Dict[str, Any]) -> Params:
  """Inverse of `flatten`."""
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def get_param(params: Params, path: str) -> Any:
  """The (unboxed) array at a `/`-joined path; KeyError names the missing path."""
  node = params
  for key in path.split("/"):
    if not hasattr(node, "keys") or key not in node:
      raise KeyError(f"No parameter at {path!r} (missing {key!r}).")
    node = node[key]
  return nn.unbox(node)


def with_params(params: Params, updates: Dict[str, Any]) -> Params:
  """A copy of `params` with each `/`-joined path in `updates` set (subtrees too).

  The input tree is not modified; intermediate dicts are created as needed.
  """
  out = _copy_dicts(params)
  for path, value in updates.items():
    node = out
    *parents, leaf = path.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return out


def without_params(params: Params, path: str) -> Params:
  """A copy of `params` without the subtree at `path` (no error when absent)."""
  out = _copy_dicts(params)
  node = out
  *parents, leaf = path.split("/")
  for key in parents:
    if key not in node:
      return out
    node = node[key]
  node.pop(leaf, None)
  return out


def _copy_dicts(tree):
  if hasattr(tree, "items") and not isinstance(tree, nn.meta.AxisMetadata):
    return {k: _copy_dicts(v) for k, v in tree.items()}
  return tree


def matches(path: str, patterns: Sequence[str]) -> bool:
  """True when a `/`-joined parameter path fully matches any regex (T5X semantics)."""
  return any(re.fullmatch(p, path) for p in patterns)


def _patterns(regexes: Sequence[str]) -> Tuple[str, ...]:
  if isinstance(regexes, str):
    raise ValueError(f"Expected a list of regexes, got the string {regexes!r}; "
                     f"write e.g. ['{regexes}'].")
  return tuple(regexes)


def split(tree: Params, regexes: Sequence[str]) -> Tuple[Params, Params]:
  """(trainable, frozen) nested subtrees of `tree`: paths that fully match any regex.

  Works on any tree shaped like the parameters (e.g. their shardings).

  Raises:
    ValueError: regexes were given but match no path.
  """
  patterns = _patterns(regexes)
  flat = flatten(tree)
  trainable = {k: v for k, v in flat.items() if matches(k, patterns)}
  frozen = {k: v for k, v in flat.items() if k not in trainable}
  if patterns and not trainable:
    examples = ", ".join(sorted(flat)[:5])
    raise ValueError(f"No parameter path fully matches the trainable regexes "
                     f"{list(patterns)} (paths look like: {examples}, …). Check "
                     f"METHOD / optim.trainable_regexes.regexes.")
  return unflatten(trainable), unflatten(frozen)


def merge(trainable: Params, frozen: Params) -> Params:
  """Inverse of `split`: the full nested tree (inputs nested or flat by path)."""
  trainable, frozen = flatten(trainable), flatten(frozen)
  overlap = set(trainable) & set(frozen)
  if overlap:
    raise ValueError(f"Parameters both trainable and frozen: {sorted(overlap)[:5]}.")
  return unflatten({**frozen, **trainable})
