r"""Pretrains the bundled tiny LM-adapted T5.1.1 (`prompt_tuning/assets/tiny_t5/`).

The paper's frozen models in miniature, on a toy language generated from code
(`prompt_tuning/tiny/corpus.py`; nothing is downloaded):

  0. a BPE SentencePiece vocabulary trained on the corpus (+100 extra ids);
  1. span corruption (noise density 0.15, mean span 3), interleaved 1:1 with the
     prefixed multitask mixture (`sentiment: …`, `topic: …`, …);
  2. LM adaptation (prefix LM), interleaved 1:1 with the same multitask mixture.

Then it measures held-out loss per objective and held-out exact-match accuracy per
task with and without the task prefix, saves the model with
`prompt_tuning.checkpoints.save` and writes `MANIFEST.json` (command, seed, steps,
corpus, parameter count, held-out numbers, sha256 of every file).

The documented full run (about 15-20 minutes of CPU time on 2 cores):

  JAX_PLATFORMS=cpu python scripts/pretrain_tiny.py \
      --output_dir prompt_tuning/assets/tiny_t5

Other sizes and objectives (`prompt_tuning/tiny/sizes.py`; `scripts/replicate.py`
pretrains the ones it needs this way):

  JAX_PLATFORMS=cpu python scripts/pretrain_tiny.py --size 5m --objective span_only \
      --vocab_file prompt_tuning/assets/tiny_t5/sentencepiece.model

  --size       0.03m | 0.1m | 0.3m | 1.3m (the bundled one) | 5m | 20m: architectures
               (explicit --emb_dim/--num_layers/... flags override a field).
  --objective  lm_adapted (default): span corruption, then LM adaptation.
               span_only: stage 1 only (span corruption + multitask), no stage 2.
               span_sentinel: trained exactly as span_only. Lester et al. (2021,
               section 3.2) use "the same model, but prepend all downstream targets
               with a sentinel"; the sentinel is a property of the downstream task
               (its `_1_sentinel` twin), so it is recorded in the manifest only.
  --output_dir defaults to the cache, ~/.cache/prompt_tuning/tiny/
               <size>_<objective>_s<seed> ($PROMPT_TUNING_CACHE replaces
               ~/.cache/prompt_tuning), never git.
  --vocab_file reuse a SentencePiece model (the bundled one, so the tiny tasks
               tokenize the same way) instead of training a vocabulary.

Pretraining saves its state every --checkpoint_every steps to <output_dir>/resume/
and a rerun with the same settings continues from there (the batch streams are
replayed to the same position), so an interrupted pretraining loses at most
--checkpoint_every steps.

Everything is seeded (data order, corruption noise, initialization) and runs
single-process, so re-running it gives the same held-out loss up to floating-point
reduction order on another CPU (see `REPRODUCIBILITY_TOLERANCE`).
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import json
import os
import pathlib
import platform
import shlex
import sys
import time
from typing import Dict, Iterator

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np
import optax

from prompt_tuning import checkpoints
from prompt_tuning import cli
from prompt_tuning import errors
from prompt_tuning.training import losses, trainer
from prompt_tuning.models.config import T5Config
from prompt_tuning.models.t5 import Transformer
from prompt_tuning.tiny import assets, corpus, pretraining, sizes, spm

REPRODUCIBILITY_TOLERANCE = 0.02  # absolute, on the mean held-out loss (nats/token)
EVAL_BATCHES = 8  # per objective, of `--batch_size` examples
EVAL_EXAMPLES_PER_TASK = 256


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.script_parser("scripts/pretrain_tiny.py", __doc__)
  p.add_argument("--output_dir", default=None,
                 help="default: the cache, sizes.model_dir(size, objective, seed)")
  p.add_argument("--size", default=sizes.BUNDLED_SIZE, choices=list(sizes.SIZES))
  p.add_argument("--objective", default=sizes.BUNDLED_OBJECTIVE,
                 choices=list(sizes.OBJECTIVES))
  p.add_argument("--vocab_file", default=None,
                 help="copy this SentencePiece model instead of training one")
  p.add_argument("--checkpoint_every", type=int, default=250,
                 help="steps between resumable state saves (0: never)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--span_steps", type=int, default=1500,
                 help="steps of stage 1 (span corruption + multitask)")
  p.add_argument("--lm_steps", type=int, default=None,
                 help="steps of stage 2 (LM adaptation + multitask); default 1500 "
                 "for lm_adapted, 0 (and nothing else allowed) for span_*")
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--learning_rate", type=float, default=2e-3)
  p.add_argument("--warmup_steps", type=int, default=200)
  p.add_argument("--sentencepiece_size", type=int, default=spm.DEFAULT_SIZE)
  p.add_argument("--vocab_documents", type=int, default=4000,
                 help="documents (and as many task examples) to train the vocab on")
  p.add_argument("--emb_dim", type=int, default=None, help="default: --size's")
  p.add_argument("--num_heads", type=int, default=None)
  p.add_argument("--head_dim", type=int, default=None)
  p.add_argument("--mlp_dim", type=int, default=None)
  p.add_argument("--num_layers", type=int, default=None)
  p.add_argument("--log_every", type=int, default=100)
  args = p.parse_args(argv)
  for field, value in sizes.SIZES[args.size].items():
    if getattr(args, field) is None:
      setattr(args, field, value)
  if args.lm_steps is None:
    args.lm_steps = 1500 if args.objective == "lm_adapted" else 0
  elif args.lm_steps and args.objective != "lm_adapted":
    p.error(f"--objective {args.objective} has no LM-adaptation stage; drop "
            f"--lm_steps {args.lm_steps} or use --objective lm_adapted.")
  if args.output_dir is None:
    args.output_dir = str(sizes.model_dir(args.size, args.objective, args.seed))
  if args.vocab_file and not pathlib.Path(args.vocab_file).exists():
    p.error(f"--vocab_file {args.vocab_file} does not exist.")
  return args


# ----------------------------------------------------------------------------------
# Model and step.
# ----------------------------------------------------------------------------------
def model_config(args, unpadded_vocab: int) -> T5Config:
  vocab = -(-unpadded_vocab // 128) * 128  # padded to a multiple of 128, as T5's
  return T5Config(vocab_size=vocab, emb_dim=args.emb_dim, num_heads=args.num_heads,
                  head_dim=args.head_dim, mlp_dim=args.mlp_dim,
                  num_encoder_layers=args.num_layers,
                  num_decoder_layers=args.num_layers,
                  relative_attention_num_buckets=32,
                  relative_attention_max_distance=64, dropout_rate=0.0)


def make_steps(model: Transformer, optimizer: optax.GradientTransformation):
  """(train_step, eval_loss, exact_match), jitted; one compile per batch shape.

  Training is the project's own step (`trainer.train_step`) with every parameter
  trainable and nothing frozen; both losses are the project's `LossFn`.
  """
  train_loss = losses.LossFn(model, enable_dropout=False)  # T5X's z-loss, per token
  summed_loss = losses.LossFn(model, z_loss=0.0, loss_normalizing_factor=None,
                              enable_dropout=False)
  no_dropout = jax.random.PRNGKey(0)  # unused: dropout is off

  @jax.jit
  def train_step(params, opt_state, batch):
    state = trainer.TrainState(jnp.zeros((), jnp.int32), params, opt_state)
    state, metrics = trainer.train_step(state, {}, batch, no_dropout,
                                        loss_fn=train_loss, optimizer=optimizer)
    return state.trainable, state.opt_state, metrics["loss"]

  @jax.jit
  def eval_loss(params, batch):
    """Summed cross-entropy of the real target tokens (no z-loss), and their count."""
    total, aux = summed_loss(params, batch)
    return total, aux["weight_sum"]

  @jax.jit
  def exact_match(params, batch):
    """[B] bool: every target token is the argmax given the gold prefix, which is
    exactly "greedy decoding reproduces the target" (EOS included)."""
    logits = model.apply({"params": params}, batch["encoder_input_tokens"],
                         batch["decoder_input_tokens"])
    target = batch["decoder_target_tokens"]
    right = (jnp.argmax(logits, -1) == target) | (target == 0)
    return jnp.all(right, axis=-1)

  return train_step, eval_loss, exact_match


def schedule(step: int, span_steps: int) -> str:
  """The objective of a step: stage 1 alternates span corruption and multitask,
  stage 2 alternates prefix LM and multitask."""
  if step % 2:
    return "multitask"
  return "span_corruption" if step < span_steps else "prefix_lm"


# ----------------------------------------------------------------------------------
# Resuming.
# ----------------------------------------------------------------------------------
RESUME_DIR = "resume"
DESCRIPTIONS = {
    "lm_adapted": ("Tiny LM-adapted T5.1.1: span corruption then LM adaptation, "
                   "each mixed 1:1 with a prefixed multitask mixture, on a generated "
                   "toy language."),
    "span_only": ("Tiny T5.1.1 pretrained with span corruption only (mixed 1:1 with "
                  "a prefixed multitask mixture), no LM adaptation."),
    "span_sentinel": ("Tiny T5.1.1 pretrained with span corruption only, as "
                      "span_only; its downstream tasks put a sentinel before every "
                      "target (Lester et al. 2021, section 3.2)."),
}


def resume_identity(args, config: T5Config) -> Dict:
  """Everything that decides the training trajectory; a saved state is reused only
  when it matches exactly."""
  return {"config": config.to_dict(), "seed": args.seed,
          "span_steps": args.span_steps, "lm_steps": args.lm_steps,
          "batch_size": args.batch_size, "learning_rate": args.learning_rate,
          "warmup_steps": args.warmup_steps}


def save_resume(out_dir: pathlib.Path, identity: Dict, step: int, params,
                opt_state) -> None:
  """Writes <out_dir>/resume/{state.msgpack,meta.json} atomically (rename)."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  target = out_dir / RESUME_DIR
  tmp = out_dir / (RESUME_DIR + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  (tmp / "state.msgpack").write_bytes(
      serialization.to_bytes({"params": params, "opt_state": opt_state}))
  (tmp / "meta.json").write_text(json.dumps({"step": step, "identity": identity},
                                            default=str))
  shutil.rmtree(target, ignore_errors=True)
  tmp.rename(target)


def load_resume(out_dir: pathlib.Path, identity: Dict, params, opt_state):
  """(step, params, opt_state) of a matching saved state, else (0, given ones)."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  target = out_dir / RESUME_DIR
  if not (target / "meta.json").exists():
    return 0, params, opt_state
  meta = json.loads((target / "meta.json").read_text())
  if meta["identity"] != json.loads(json.dumps(identity, default=str)):
    print(f"ignoring {target}: saved with other settings", flush=True)
    return 0, params, opt_state
  state = serialization.from_bytes({"params": params, "opt_state": opt_state},
                                   (target / "state.msgpack").read_bytes())
  return int(meta["step"]), state["params"], state["opt_state"]


# ----------------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------------
def heldout_losses(params, eval_loss, tokenizer, seed: int, batch_size: int
                   ) -> Dict[str, float]:
  out = {}
  for objective in pretraining.OBJECTIVES:
    batches = pretraining.stream(objective, tokenizer, seed, "validation", batch_size)
    total, count = 0.0, 0.0
    for _ in range(EVAL_BATCHES):
      loss, n = eval_loss(params, next(batches))
      total, count = total + float(loss), count + float(n)
    out[objective] = round(total / count, 4)
  out["mean"] = round(float(np.mean([out[o] for o in pretraining.OBJECTIVES])), 4)
  return out


def task_accuracies(params, exact_match, tokenizer, seed: int
                    ) -> Dict[str, Dict[str, float]]:
  out = {}
  for task in corpus.TASKS:
    row = {}
    for with_prefix in (True, False):
      batch = pretraining.task_batch(tokenizer, task, "validation",
                                     EVAL_EXAMPLES_PER_TASK, with_prefix, seed)
      row["with_prefix" if with_prefix else "without_prefix"] = round(
          100.0 * float(np.mean(exact_match(params, batch))), 1)
    out[task] = row
  return out


# ----------------------------------------------------------------------------------
# Output.
# ----------------------------------------------------------------------------------
def sha256_of_files(root: pathlib.Path) -> Dict[str, str]:
  out = {}
  for path in sorted(p for p in root.rglob("*") if p.is_file()):
    if path.name == assets.MANIFEST_FILE:
      continue
    out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
  return out


def main(argv=None) -> Dict:
  args = parse_args(argv)
  out_dir = pathlib.Path(args.output_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  command = "JAX_PLATFORMS=cpu python scripts/pretrain_tiny.py " + " ".join(
      shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
  start = time.time()

  # 0. Vocabulary.
  vocab_path = out_dir / assets.VOCAB_FILE
  if args.vocab_file:
    if pathlib.Path(args.vocab_file).resolve() != vocab_path.resolve():
      shutil.copyfile(args.vocab_file, vocab_path)
  else:
    spm.train(corpus.vocabulary_text(args.seed, args.vocab_documents),
              str(vocab_path), args.sentencepiece_size)
  tokenizer = pretraining.Tokenizer(str(vocab_path))
  config = model_config(args, tokenizer.vocab_size)
  print(f"vocabulary: {tokenizer.pieces} pieces + {pretraining.EXTRA_IDS} extra ids "
        f"-> model vocab {config.vocab_size}", flush=True)

  # 1-2. Pretraining.
  model = Transformer(config)
  total_steps = args.span_steps + args.lm_steps
  dummy = jnp.zeros([1, 4], jnp.int32)
  params = nn.unbox(model.init(jax.random.PRNGKey(args.seed), dummy, dummy)["params"])
  num_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
  print(f"model: {num_params:,} parameters, {config}", flush=True)
  lr = optax.warmup_cosine_decay_schedule(
      0.0, args.learning_rate, min(args.warmup_steps, max(total_steps - 1, 1)),
      max(total_steps, 2), end_value=0.1 * args.learning_rate)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adam(lr, b1=0.9, b2=0.98))
  opt_state = optimizer.init(params)
  train_step, eval_loss, exact_match = make_steps(model, optimizer)
  streams: Dict[str, Iterator] = {
      o: pretraining.stream(o, tokenizer, args.seed, "train", args.batch_size)
      for o in pretraining.OBJECTIVES}
  running: Dict[str, list] = {o: [] for o in pretraining.OBJECTIVES}
  identity = resume_identity(args, config)
  first, params, opt_state = load_resume(out_dir, identity, params, opt_state)
  if first:
    for step in range(first):  # replay the streams to where the state left them
      next(streams[schedule(step, args.span_steps)])
    print(f"resumed at step {first}/{total_steps} from {out_dir / RESUME_DIR}",
          flush=True)
  tick = time.time()
  for step in range(first, total_steps):
    objective = schedule(step, args.span_steps)
    params, opt_state, loss = train_step(params, opt_state, next(streams[objective]))
    running[objective].append(loss)
    if (step + 1) % args.log_every == 0 or step + 1 == total_steps:
      means = {o: float(np.mean(v)) for o, v in running.items() if v}
      print(f"step {step + 1}/{total_steps} "
            + " ".join(f"{o}={v:.3f}" for o, v in means.items())
            + f" ({(time.time() - tick) / args.log_every:.2f}s/step)", flush=True)
      running = {o: [] for o in pretraining.OBJECTIVES}
      tick = time.time()
    if (args.checkpoint_every and (step + 1) % args.checkpoint_every == 0
        and step + 1 < total_steps):
      save_resume(out_dir, identity, step + 1, params, opt_state)
  train_seconds = time.time() - start

  # Held-out evaluation.
  losses = heldout_losses(params, eval_loss, tokenizer, args.seed, args.batch_size)
  accuracy = task_accuracies(params, exact_match, tokenizer, args.seed)
  print(f"held-out loss: {losses}", flush=True)
  for task, row in accuracy.items():
    print(f"  {task:10s} accuracy with prefix {row['with_prefix']:5.1f}%  "
          f"without {row['without_prefix']:5.1f}%", flush=True)

  # Save.
  checkpoints.save(out_dir / assets.CHECKPOINT_DIR, params, config, overwrite=True)
  shutil.rmtree(out_dir / RESUME_DIR, ignore_errors=True)  # finished: not needed
  manifest = {
      "description": DESCRIPTIONS[args.objective],
      "size": args.size,
      "objective": args.objective,
      "downstream_target_sentinel": args.objective == "span_sentinel",
      "command": command,
      "seed": args.seed,
      "steps": {"span_corruption_stage": args.span_steps,
                "lm_adaptation_stage": args.lm_steps, "total": total_steps},
      "batch_size": args.batch_size,
      "optimizer": (f"clip 1.0 + Adam(b1=0.9, b2=0.98), lr {args.learning_rate} "
                    f"warmup {args.warmup_steps} then cosine to 10%"),
      "objectives": {
          "span_corruption": {"noise_density": 0.15, "mean_span_length": 3,
                              "chunk_tokens": pretraining.SPAN_CHUNK,
                              "sentinels": "<extra_id_0> = last id, counting down"},
          "prefix_lm": {"chunk_tokens": pretraining.LM_CHUNK - 1,
                        "split": "uniform random point"},
          "multitask": {"tasks": list(corpus.TASKS),
                        "format": "'<task>: <sentence>' -> label/word"},
      },
      "corpus": ("prompt_tuning/tiny/corpus.py: sentences '<NP> <verb> <NP> [tail] .' "
                 "over a 110-word lexicon, each with one positive or negative mood "
                 "adjective; documents of 3-8 sentences; train/validation/test by "
                 "crc32 of the sentence text (80/10/10)."),
      "vocabulary": {"file": assets.VOCAB_FILE, "type": "sentencepiece bpe",
                     "pieces": tokenizer.pieces, "extra_ids": pretraining.EXTRA_IDS,
                     "model_vocab_size": config.vocab_size},
      "config": config.to_dict(),
      "parameter_count": num_params,
      "heldout_loss": losses,
      "heldout_loss_tolerance": REPRODUCIBILITY_TOLERANCE,
      "heldout_accuracy": accuracy,
      "train_seconds": round(train_seconds, 1),
      "platform": {"jax": jax.__version__, "machine": platform.machine(),
                   "devices": str(jax.devices())},
      "files": sha256_of_files(out_dir),
  }
  (out_dir / assets.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
  print(f"wrote {out_dir} in {time.time() - start:.0f}s", flush=True)
  return manifest


if __name__ == "__main__":
  errors.run_reporting("scripts/pretrain_tiny.py", main)
