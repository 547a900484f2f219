"""Tasks re-tokenized with a Hugging Face tokenizer (a tiny byte-level BPE built
here), checked against transformers' own fast tokenizer on the same file."""
import json

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import tasks
from prompt_tuning import data_decoder
from tasks import hf_vocab

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")
EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  """A GPT-2-style byte-level BPE trained on a few sentences, saved like a HF model."""
  path = tmp_path_factory.mktemp("tiny_gpt2_tokenizer")
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=[EOS],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(
      ["Write a function to return the sum of the squares of a list of integers.",
       "def sum_squares(xs): return sum(x * x for x in xs)",
       "The Eagle is a cheap coffee shop near Burger King."] * 5, trainer)
  tokenizer.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS}))
  return str(path)


def test_vocabulary_matches_transformers(tokenizer_dir):
  vocab = hf_vocab.HfTokenizerVocabulary(tokenizer_dir)
  reference = transformers.PreTrainedTokenizerFast(
      tokenizer_file=f"{tokenizer_dir}/tokenizer.json", eos_token=EOS)
  assert vocab.eos_id == reference.eos_token_id
  for text in ["The Eagle is near Burger King.", "  spaces\tand\nnewlines £ 20 ünïcode",
               "", "!!!"]:
    ids = vocab.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False)
    assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids
    assert vocab.decode(ids + [vocab.eos_id] + ids) == reference.decode(ids)
  rows = [vocab.encode("coffee shop") + [vocab.eos_id, 5],
          vocab.encode("sum of") + [vocab.eos_id]]
  width = max(map(len, rows))
  batch = tf.constant([r + [0] * (width - len(r)) for r in rows])  # 0 after EOS
  assert [t.decode() for t in vocab.decode_tf(batch).numpy()] == ["coffee shop", "sum of"]


def test_retokenized_task_end_to_end(tokenizer_dir):
  name = hf_vocab.retokenized("mbpp_sample", tokenizer_dir)
  assert name.startswith("mbpp_sample.tiny_gpt2_tokenizer")
  vocab = hf_vocab.HfTokenizerVocabulary(tokenizer_dir)
  task = seqio.get_mixture_or_task(name)
  ex = next(iter(tfds.as_numpy(task.get_dataset({"inputs": 512, "targets": 128},
                                                split="validation", shuffle=False))))
  assert ex["inputs"].tolist() == vocab.encode(ex["inputs_pretokenized"].decode()) + [
      vocab.eos_id]
  assert ex["targets"].tolist()[-1] == vocab.eos_id
  batch = next(data_decoder.batches(name, {"inputs": 128, "targets": 64}, 2,
                                    decoder_only=True, bos_id=vocab.eos_id,
                                    shuffle=False))
  row = batch["decoder_target_tokens"][0][batch["decoder_loss_weights"][0] == 1]
  assert vocab.decode(row.tolist()) == ex["targets_pretokenized"].decode()
  assert [type(f).__name__ for f in task.metric_fns] == ["PassAtK"]
  assert task.postprocess_fn("```python\nx = 1\n```") == "x = 1"


def test_clear_errors(tmp_path):
  with pytest.raises(hf_vocab.TokenizerError, match="tokenizer.json"):
    hf_vocab.HfTokenizerVocabulary(str(tmp_path))
  with pytest.raises(ValueError, match="mixture"):
    hf_vocab.retokenized("super_glue_v102_proportional", str(tmp_path))
