"""Serve many prompts from one frozen T5: requests in, records out, same order.

  server = PromptServer(model, params, bank, vocab, routes=make_routes(bank, …),
                        input_length=512, max_decode_length=8, batch_size=32)
  for record in server.serve(requests):   # infer_io.Request → output dict
    ...

Every request names a *route*: one prompt of the bank, or an ensemble of N bank
prompts (the request is replicated across them, as in `ensemble.py`), optionally
with label strings for rank classification. The server turns requests into rows
(one per bank prompt to run), packs rows of any mix of prompts into batches of
`[batch_size, input_length]` tokens plus `prompt_index [batch_size]`, pads the last
batch with dummy rows, and runs one compiled decode (and/or one rank-classification)
call per batch, whatever the mix: shapes never change, so nothing recompiles.
Records are emitted in request order as soon as all their rows are done; error
requests pass through in place.

Output records: `{**extra, "prompt", "inputs", "prediction"}` plus
  * `"scores": {label: log-likelihood}` when ranking (the mean over an ensemble);
  * `"votes": [one prediction per ensemble prompt]` for ensembles;
  * `"truncated": true` when the inputs were cut to `input_length` tokens.
"""
from __future__ import annotations

import collections
import dataclasses
import inspect
from typing import (Any, Callable, Deque, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sequence, Tuple, Union)

import flax.linen as nn
import jax
import numpy as np

from prompt_tuning.models import decoder_decoding, decoding, families
from prompt_tuning.inference import ensemble, ranking
from prompt_tuning import partitioning
from prompt_tuning.inference.io import Request
from prompt_tuning.methods.bank import PromptBank

Params = Mapping[str, Any]
LabelSpec = Union[None, Sequence[str], Mapping[str, Optional[Sequence[str]]]]


@dataclasses.dataclass(frozen=True)
class Route:
  """How one served name runs.

  Attributes:
    rows: bank rows to run the request with; more than one is an ensemble (its
      decoded answers vote, its label scores are averaged), in tie-break order.
    labels: rank the inputs against these strings instead of decoding.
  """
  rows: Tuple[int, ...]
  labels: Optional[Tuple[str, ...]] = None


def make_routes(bank: PromptBank,
                ensembles: Optional[Mapping[str, Sequence[str]]] = None,
                labels: LabelSpec = None) -> Dict[str, Route]:
  """Routes for every bank prompt and every ensemble.

  Args:
    bank: the served prompts (each is a route of one row, named like it).
    ensembles: ensemble name → bank prompt names (best first: ties go to the
      earliest).
    labels: None (decode everything), one list of label strings for every route,
      or route name → list (routes not named decode).

  Raises:
    ValueError: an ensemble reuses a prompt name, names an unknown prompt, or
      `labels` names an unknown route.
  """
  routes = {name: (k,) for k, name in enumerate(bank.names)}
  for name, members in (ensembles or {}).items():
    if name in routes:
      raise ValueError(f"Ensemble {name!r} has the name of a served prompt; rename it "
                       "(--gin.ENSEMBLES).")
    if isinstance(members, str) or not members:
      raise ValueError(f"Ensemble {name!r} needs a list of prompt names; got "
                       f"{members!r} (--gin.ENSEMBLES).")
    unknown = [m for m in members if m not in bank.names]
    if unknown:
      raise ValueError(f"Ensemble {name!r} names unknown prompts {unknown}; loaded "
                       f"prompts: {list(bank.names)} (--gin.ENSEMBLES).")
    routes[name] = tuple(bank.index(m) for m in members)
  if labels is None:
    per_route = {}
  elif isinstance(labels, Mapping):
    unknown = [n for n in labels if n not in routes]
    if unknown:
      raise ValueError(f"LABELS names {unknown}, which are not served; served: "
                       f"{list(routes)}.")
    per_route = {n: l for n, l in labels.items() if l is not None}
  else:
    per_route = {n: labels for n in routes}
  for name, strings in per_route.items():
    if isinstance(strings, str) or not strings or not all(
        isinstance(s, str) for s in strings):
      raise ValueError(f"Labels of {name!r} must be a non-empty list of strings; "
                       f"got {strings!r} (--gin.LABELS).")
  return {name: Route(rows, tuple(per_route[name]) if name in per_route else None)
          for name, rows in routes.items()}


@dataclasses.dataclass
class _Pending:
  """A request waiting for its rows (or an error record waiting its turn)."""
  request: Request
  route: Optional[Route] = None
  truncated: bool = False
  results: List[Any] = dataclasses.field(default_factory=list)
  remaining: int = 0


@dataclasses.dataclass
class Stats:
  requests: int = 0
  errors: int = 0
  truncated: int = 0
  batches: int = 0

  @property
  def predictions(self) -> int:
    return self.requests - self.errors


class PromptServer:
  """Batches requests for a prompt bank on one frozen model (see module docstring)."""

  def __init__(self, model: nn.Module, params: Params, bank: PromptBank, vocab: Any, *,
               routes: Mapping[str, Route], input_length: int,
               max_decode_length: int, batch_size: int,
               decode_fn: Optional[Callable[..., Any]] = None, add_eos: bool = True,
               seed: int = 0, mesh=None,
               on_batch: Optional[Callable[[], None]] = None,
               axis_rules: Optional[partitioning.Rules] = None):
    """
    Args:
      model: `Transformer(config, prompt=bank)`.
      params: its parameters (the bank at `encoder/prompt/prompts`).
      bank: the `PromptBank` (names and rows).
      vocab: a seqio vocabulary (`encode`, `decode`, `eos_id`).
      routes: served name → `Route` (`make_routes`).
      input_length: T; inputs are trimmed (EOS kept when `add_eos`) and 0-padded.
      max_decode_length: L for decoding.
      batch_size: B rows per compiled call.
      decode_fn: `DECODE_FN` (default greedy); gets `rng=` when it takes one.
      add_eos: inputs end with EOS, as seqio's `append_eos_after_trim`.
      seed: sampling key (`fold_in(key, batch number)`).
      mesh: shard each batch over the `data` axis when B divides evenly.
      on_batch: called after every compiled batch (progress).
      axis_rules: with a mesh, activations are constrained by this rule table
        (default `partitioning.rules()`), as in training.
    """
    if input_length < 2 or batch_size < 1:
      raise ValueError(f"Need input_length >= 2 and batch_size >= 1; got "
                       f"{input_length}, {batch_size}.")
    self.model, self.params, self.bank, self.vocab = model, params, bank, vocab
    self.routes = dict(routes)
    self.input_length, self.max_decode_length = input_length, max_decode_length
    self.batch_size, self.add_eos = batch_size, add_eos
    # A decoder-only model (GPT-2, Llama) continues `[bos] + input` (`_causal_rows`).
    self.decoder_only = families.is_decoder_only(getattr(model, "config", None))
    self.decode_fn = decode_fn or (decoder_decoding.greedy_decode if self.decoder_only
                                   else decoding.greedy_decode)
    self.eos_id = int(getattr(vocab, "eos_id", 1))
    self._rng = jax.random.PRNGKey(seed)
    self._takes_rng = _accepts(self.decode_fn, "rng")
    self._sharding = None
    if mesh is not None and batch_size % mesh.shape[partitioning.DATA] == 0:
      self._sharding = partitioning.batch_sharding(mesh)
    self.on_batch = on_batch
    self._mesh, self._axis_rules = mesh, axis_rules
    self.stats = Stats()
    # Every label string of every route, scored together: [K_all, L_label].
    self.label_strings = list(dict.fromkeys(
        s for r in self.routes.values() for s in (r.labels or ())))
    self.label_tokens = self._label_tokens(self.label_strings)
    self._label_columns = {
        name: np.asarray([self.label_strings.index(s) for s in r.labels])
        for name, r in self.routes.items() if r.labels}
    if self.decoder_only and self.label_strings:
      raise ValueError("Rank classification (LABELS) is implemented for T5 models "
                       "only; decode with a decoder-only model (drop LABELS).")

  @property
  def names(self) -> List[str]:
    return list(self.routes)

  # ---------------------------------------------------------------- tokens
  def trim(self, ids: Sequence[int]) -> Tuple[np.ndarray, bool]:
    """Untrimmed ids → (at most T int32 ids, whether any were cut), as seqio does:
    with `add_eos`, EOS is appended after cutting to T - 1."""
    ids = list(ids)
    if self.add_eos:
      if ids and ids[-1] == self.eos_id:
        ids = ids[:-1]
      truncated = len(ids) > self.input_length - 1
      ids = ids[:self.input_length - 1] + [self.eos_id]
    else:
      truncated = len(ids) > self.input_length
      ids = ids[:self.input_length]
    return np.asarray(ids, np.int32), truncated

  def tokenize(self, request: Request) -> Tuple[np.ndarray, bool]:
    ids = request.tokens if request.tokens is not None else self.vocab.encode(
        request.inputs)
    return self.trim(ids)

  def _label_tokens(self, strings: Sequence[str]) -> Optional[np.ndarray]:
    if not strings:
      return None
    encoded = [list(self.vocab.encode(s)) + [self.eos_id] for s in strings]
    out = np.zeros((len(encoded), max(len(e) for e in encoded)), np.int32)
    for k, ids in enumerate(encoded):
      out[k, :len(ids)] = ids
    return out

  def detokenize(self, ids: Sequence[int]) -> str:
    """Generated ids → text, stopping before the first EOS."""
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self.vocab.decode(ids)

  # ---------------------------------------------------------------- serving
  def serve(self, requests: Iterable[Request]) -> Iterator[Dict[str, Any]]:
    """Yields one output record per request, in request order."""
    pending: Deque[_Pending] = collections.deque()
    rows: List[Tuple[_Pending, int, np.ndarray, int]] = []
    for request in requests:
      self.stats.requests += 1
      if request.error is None and request.prompt not in self.routes:
        request.error = (f"unknown prompt {request.prompt!r}; served prompts: "
                         f"{self.names}")
      if request.error is not None:
        self.stats.errors += 1
        pending.append(_Pending(request))
      else:
        route = self.routes[request.prompt]
        tokens, truncated = self.tokenize(request)
        self.stats.truncated += truncated
        entry = _Pending(request, route, truncated, [None] * len(route.rows),
                         len(route.rows))
        pending.append(entry)
        rows.extend((entry, slot, tokens, row) for slot, row in enumerate(route.rows))
      while len(rows) >= self.batch_size:
        self._run(rows[:self.batch_size])
        rows = rows[self.batch_size:]
      yield from self._flush(pending)
    if rows:
      self._run(rows)
    yield from self._flush(pending)

  def _flush(self, pending: Deque[_Pending]) -> Iterator[Dict[str, Any]]:
    while pending and pending[0].remaining == 0:
      yield self._record(pending.popleft())

  def _run(self, rows: Sequence[Tuple[_Pending, int, np.ndarray, int]]) -> None:
    """`_run_rows` with the activations partitioned by the training rules."""
    if self._mesh is None:
      return self._run_rows(rows)
    with partitioning.activation_partitioning(self._mesh, self._axis_rules):
      return self._run_rows(rows)

  def _run_rows(self, rows: Sequence[Tuple[_Pending, int, np.ndarray, int]]) -> None:
    """One compiled call (per kind) on B rows; dummy rows pad a short batch."""
    tokens = np.zeros((self.batch_size, self.input_length), np.int32)
    index = np.zeros((self.batch_size,), np.int32)
    lengths = np.zeros((self.batch_size,), np.int32)
    for i, (_, _, ids, row) in enumerate(rows):
      tokens[i, :len(ids)] = ids
      index[i] = row
      lengths[i] = len(ids)
    tokens_in, index_in = tokens, index
    if self._sharding is not None:
      tokens_in = jax.device_put(tokens, self._sharding)
      index_in = jax.device_put(index, self._sharding)
    decoded = scores = None
    if any(entry.route.labels is None for entry, *_ in rows):
      kwargs = {"max_decode_length": self.max_decode_length, "prompt_index": index_in}
      if self._takes_rng:
        kwargs["rng"] = jax.random.fold_in(self._rng, self.stats.batches)
      if self.decoder_only:
        tokens_in, kwargs = self._causal_rows(tokens, lengths, kwargs)
      out = self.decode_fn(self.model, self.params, tokens_in, **kwargs)
      decoded = np.asarray(out[0] if isinstance(out, tuple) else out)
    if any(entry.route.labels for entry, *_ in rows):
      _, scores = ranking.rank_classify(self.model, self.params, tokens_in,
                                        self.label_tokens, prompt_index=index_in)
      scores = np.asarray(scores)  # [B, K_all]
    for i, (entry, slot, _, _) in enumerate(rows):
      if entry.route.labels:
        entry.results[slot] = scores[i, self._label_columns[entry.request.prompt]]
      else:
        entry.results[slot] = self.detokenize(decoded[i])
      entry.remaining -= 1
    self.stats.batches += 1
    if self.on_batch is not None:
      self.on_batch()

  def _causal_rows(self, tokens: np.ndarray, lengths: np.ndarray,
                   kwargs: Dict[str, Any]):
    """A decoder-only model's input: `[bos] + input` `[B, T + 1]` with its mask
    (`data_decoder`'s `decoder_prompt_tokens`, BOS = the model config's
    `bos_token_id`, as in training; id 0 may be a real token, so the mask comes from
    the lengths), the vocabulary's EOS, and `prompt_index` only for a prompt bank."""
    bos = int(getattr(getattr(self.model, "config", None), "bos_token_id", 0) or 0)
    full = np.concatenate([np.full((len(tokens), 1), bos, np.int32), tokens], axis=1)
    mask = np.arange(full.shape[1])[None, :] <= lengths[:, None]
    if getattr(getattr(self.model, "prompt", None), "num_prompts", None) is None:
      kwargs.pop("prompt_index")
    kwargs.update(attention_mask=mask, eos_id=self.eos_id)
    if self._sharding is not None:
      full = jax.device_put(full, self._sharding)
      kwargs["attention_mask"] = jax.device_put(mask, self._sharding)
    return full, kwargs

  def _record(self, entry: _Pending) -> Dict[str, Any]:
    request = entry.request
    if request.error is not None:
      return request.error_record()
    record = dict(request.extra)
    record.update(prompt=request.prompt, inputs=request.inputs)
    labels = entry.route.labels
    if labels:
      per_prompt = np.stack(entry.results)  # [N, K]
      mean = per_prompt.mean(axis=0)
      record["prediction"] = labels[int(np.argmax(mean))]
      record["scores"] = {label: float(s) for label, s in zip(labels, mean)}
      votes = [labels[int(np.argmax(s))] for s in per_prompt]
    else:
      votes = list(entry.results)
      record["prediction"] = ensemble.majority_vote([votes])[0]
    if len(entry.route.rows) > 1:
      record["votes"] = votes
    if entry.truncated:
      record["truncated"] = True
    return record


def _accepts(fn: Callable[..., Any], name: str) -> bool:
  try:
    return name in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False
