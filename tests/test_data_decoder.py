"""The decoder-only feature converter: hand-made examples, seqio's PrefixLM converter
as the reference, and real tasks end to end (loss on targets only, EOS, padding, left
padding of generation prompts)."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks
from prompt_tuning import data
from prompt_tuning import data_decoder


def _convert(examples, lengths, bos_id=0):
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in examples[0]})
  return list(data_decoder.convert(ds, lengths, bos_id).as_numpy_iterator())


def test_hand_made_example():
  # inputs "5 6 <eos=1>", targets "7 <eos>"; L_in = 4, L_out = 3, bos 9.
  (ex,) = _convert([{"inputs": [5, 6, 1], "targets": [7, 1]}],
                   {"inputs": 4, "targets": 3}, bos_id=9)
  assert ex["decoder_target_tokens"].tolist() == [5, 6, 1, 7, 1, 0, 0]
  assert ex["decoder_input_tokens"].tolist() == [9, 5, 6, 1, 7, 0, 0]
  assert ex["decoder_loss_weights"].tolist() == [0, 0, 0, 1, 1, 0, 0]
  assert ex["decoder_segment_ids"].tolist() == [1, 1, 1, 1, 1, 0, 0]
  assert ex["decoder_positions"].tolist() == [0, 1, 2, 3, 4, 0, 0]
  assert ex["decoder_prompt_tokens"].tolist() == [0, 9, 5, 6, 1]
  assert ex["decoder_prompt_mask"].tolist() == [0, 1, 1, 1, 1]
  assert ex["decoder_prompt_positions"].tolist() == [0, 0, 1, 2, 3]
  assert all(v.dtype == np.int32 for v in ex.values())


def test_full_lengths_and_prompt_alignment():
  lengths = {"inputs": 3, "targets": 2}
  rows = _convert([{"inputs": [4, 4, 1], "targets": [8, 1]},
                   {"inputs": [1], "targets": [1]},
                   {"inputs": [0, 0, 1], "targets": [0, 1]}], lengths, bos_id=0)
  full, short, zeros = rows
  assert full["decoder_segment_ids"].tolist() == [1] * 5  # no padding at all
  assert full["decoder_prompt_mask"].tolist() == [1] * 4
  # Only the target EOS: the loss is on that one token.
  assert short["decoder_loss_weights"].tolist() == [0, 1, 0, 0, 0]
  assert short["decoder_prompt_tokens"].tolist() == [0, 0, 0, 1]
  # Token id 0 as real text (GPT-2's "!") is kept apart from padding by the masks.
  assert zeros["decoder_target_tokens"].tolist() == [0, 0, 1, 0, 1]
  assert zeros["decoder_segment_ids"].tolist() == [1, 1, 1, 1, 1]
  for ex in rows:
    n = int(ex["decoder_prompt_mask"].sum()) - 1  # input tokens
    real_prompt = ex["decoder_prompt_tokens"][ex["decoder_prompt_mask"] == 1]
    # The prompt is exactly the teacher-forced inputs up to x's last token, so its
    # last logits predict the first target token.
    np.testing.assert_array_equal(real_prompt, ex["decoder_input_tokens"][:n + 1])
    assert ex["decoder_loss_weights"][n] == 1 and ex["decoder_loss_weights"][:n].sum() == 0


def test_targets_only_task_has_loss_everywhere():
  (ex,) = _convert([{"targets": [3, 4, 1]}], {"targets": 4}, bos_id=2)
  assert ex["decoder_input_tokens"].tolist() == [2, 3, 4, 0]
  assert ex["decoder_loss_weights"].tolist() == [1, 1, 1, 0]
  assert ex["decoder_prompt_tokens"].tolist() == [2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_seqio_prefix_lm_converter(seed):
  # seqio takes id 0 for padding, so the reference is only valid without zeros.
  rng = np.random.RandomState(seed)
  lengths = {"inputs": 7, "targets": 5}
  examples = [{"inputs": rng.randint(1, 50, rng.randint(1, 8)).astype(np.int32),
               "targets": rng.randint(1, 50, rng.randint(1, 6)).astype(np.int32)}
              for _ in range(6)]
  ours = _convert(examples, lengths, bos_id=0)
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples), output_signature={
          k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})
  reference = list(seqio.PrefixLMFeatureConverter(
      pack=False, loss_on_targets_only=True)(ds, lengths).as_numpy_iterator())
  for a, b in zip(ours, reference):
    for key in ("decoder_target_tokens", "decoder_loss_weights"):
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # seqio shifts the padded row, so its first padding column repeats the last
    # token; real columns must agree and ours keeps padding zero.
    real = a["decoder_segment_ids"] == 1
    np.testing.assert_array_equal(a["decoder_input_tokens"][real],
                                  b["decoder_input_tokens"][real])
    assert not a["decoder_input_tokens"][~real].any()


def test_rejects_missing_lengths():
  ds = tf.data.Dataset.from_tensors({"inputs": [1], "targets": [1]})
  with pytest.raises(ValueError, match="'inputs' length"):
    data_decoder.convert(ds, {"targets": 3})


def test_the_family_switch_feeds_each_model_its_bos():
  """model_io.of: decoder-only configs start rows with their `bos_token_id` (the
  released models' presets carry the tokenizer's BOS; HF config.json sets it when
  no gin config is given); T5 keeps its decoder start 0."""
  from prompt_tuning.models import decoder_config  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models.config import preset  # pylint: disable=g-import-not-at-top
  from prompt_tuning.training import model_io  # pylint: disable=g-import-not-at-top
  expected = {"small": 50256, "tiny": 0}
  for name, bos in expected.items():
    io = model_io.of(decoder_config.gpt2_preset(name))
    assert io.decoder_only and io.bos_id == bos
  for name, bos in {"llama2_7b": 1, "llama3_8b": 128000, "qwen2_7b": 151643,
                    "mistral_7b": 1, "phi3_mini": 1}.items():
    assert model_io.of(decoder_config.llama_preset(name)).bos_id == bos, name
  t5 = model_io.of(preset("tiny"))
  assert not t5.decoder_only and t5.bos_id == 0


@pytest.fixture
def t5_vocab_env(monkeypatch, t5_vocab_path):
  monkeypatch.setenv("PROMPT_TUNING_VOCAB", t5_vocab_path)
  return t5_vocab_path


def _local_task(tmp_path, lines):
  path = tmp_path / "train.jsonl"
  path.write_text("\n".join(lines) + "\n")
  return tasks.register_local_task("dd_local", train=str(path), validation=str(path))


def test_real_task_batches_both_families(tmp_path, t5_vocab_env):
  name = _local_task(tmp_path, [
      '{"inputs": "hello world", "targets": "greeting"}',
      '{"inputs": "a much longer input that will be cut short here", "targets": "cut"}'])
  lengths = {"inputs": 6, "targets": 4}
  vocab = tasks.get_vocabulary()
  batch = next(data_decoder.batches(name, lengths, 2, decoder_only=True, bos_id=0,
                                    shuffle=False))
  assert batch["decoder_target_tokens"].shape == (2, 10)
  assert batch["decoder_prompt_tokens"].shape == (2, 7)
  assert batch["truncated"].tolist() == [0, 1]
  for row in range(2):
    weights = batch["decoder_loss_weights"][row]
    target_ids = batch["decoder_target_tokens"][row][weights == 1].tolist()
    assert target_ids[-1] == 1  # EOS carries loss
    assert vocab.decode(target_ids[:-1]) == ["greeting", "cut"][row]
  enc_dec = next(data_decoder.batches(name, lengths, 2, decoder_only=False, shuffle=False))
  assert set(enc_dec) == set(data.MODEL_FEATURES) | {"truncated"}
  # Same target tokens either way.
  np.testing.assert_array_equal(
      enc_dec["decoder_target_tokens"][0][enc_dec["decoder_loss_weights"][0] == 1],
      batch["decoder_target_tokens"][0][batch["decoder_loss_weights"][0] == 1])


def test_eval_examples_and_padded_batches(tmp_path, t5_vocab_env):
  name = _local_task(tmp_path, ['{"inputs": "one", "targets": "1"}',
                                '{"inputs": "two two", "targets": "2"}',
                                '{"inputs": "three", "targets": "3"}'])
  task = seqio.get_mixture_or_task(name)
  examples = data_decoder.eval_examples_for(task, {"inputs": 5, "targets": 3},
                                            decoder_only=True, bos_id=7)
  assert examples.targets == ["1", "2", "3"]
  batches = list(data_decoder.padded_batches(examples.features, 2))
  assert [b["decoder_prompt_tokens"].shape for b in batches] == [(2, 6), (2, 6)]
  last = batches[1]
  assert last["decoder_prompt_mask"][1].sum() == 0 and last["decoder_segment_ids"][1].sum() == 0
  first = batches[0]["decoder_prompt_tokens"][0]
  mask = batches[0]["decoder_prompt_mask"][0]
  assert first[mask == 1][0] == 7  # the BOS after the left padding
  assert tasks.get_vocabulary().decode(first[mask == 1][1:-1].tolist()) == "one"


# ============ against transformers: a tiny random GPT-2 as the reference ============
def _tiny_gpt2():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2,
                                   n_head=2, bos_token_id=63, eos_token_id=63)
  return torch, transformers.GPT2LMHeadModel(config).eval()


EXAMPLES = [{"inputs": [5, 6, 7, 1], "targets": [9, 10, 1]},
            {"inputs": [3, 1], "targets": [0, 11, 12, 13, 1]},
            {"inputs": [8, 8, 8, 8, 8, 1], "targets": [1]}]
LENGTHS = {"inputs": 6, "targets": 5}


def test_loss_matches_transformers_causal_lm_convention():
  torch, model = _tiny_gpt2()
  rows = _convert(EXAMPLES, LENGTHS, bos_id=63)
  batch = {k: torch.tensor(np.stack([r[k] for r in rows]), dtype=torch.long)
           for k in rows[0]}
  with torch.no_grad():
    logits = model(input_ids=batch["decoder_input_tokens"],
                   attention_mask=batch["decoder_segment_ids"],
                   position_ids=batch["decoder_positions"]).logits
    token_loss = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), batch["decoder_target_tokens"], reduction="none")
    ours = (token_loss * batch["decoder_loss_weights"]).sum(1) / batch[
        "decoder_loss_weights"].sum(1)
    for i, ex in enumerate(EXAMPLES):
      # transformers: ids = bos + inputs + targets, labels -100 on the prompt part.
      ids = torch.tensor([[63] + ex["inputs"] + ex["targets"]])
      labels = torch.tensor([[-100] * (1 + len(ex["inputs"])) + ex["targets"]])
      reference = model(input_ids=ids, labels=labels).loss
      np.testing.assert_allclose(ours[i].item(), reference.item(), rtol=1e-5)


def test_left_padded_prompts_generate_like_unpadded_ones():
  torch, model = _tiny_gpt2()
  rows = _convert(EXAMPLES, LENGTHS, bos_id=63)
  tokens = torch.tensor(np.stack([r["decoder_prompt_tokens"] for r in rows]),
                        dtype=torch.long)
  mask = torch.tensor(np.stack([r["decoder_prompt_mask"] for r in rows]),
                      dtype=torch.long)
  positions = np.stack([r["decoder_prompt_positions"] for r in rows])
  # transformers derives the same positions from the mask for real tokens.
  hf_positions = (mask.cumsum(-1) - 1).numpy()
  np.testing.assert_array_equal(positions[mask.numpy() == 1],
                                hf_positions[mask.numpy() == 1])
  with torch.no_grad():
    padded = model.generate(tokens, attention_mask=mask, max_new_tokens=4,
                            do_sample=False, pad_token_id=0)[:, tokens.shape[1]:]
    for i, ex in enumerate(EXAMPLES):
      alone = torch.tensor([[63] + ex["inputs"]])
      single = model.generate(alone, attention_mask=torch.ones_like(alone),
                              max_new_tokens=4, do_sample=False,
                              pad_token_id=0)[0, alone.shape[1]:]
      np.testing.assert_array_equal(padded[i].numpy(), single.numpy())
      # The first generated token is the teacher-forced prediction at the last
      # prompt position of the training features.
      r = rows[i]
      logits = model(
          input_ids=torch.tensor(r["decoder_input_tokens"][None], dtype=torch.long),
          attention_mask=torch.tensor(r["decoder_segment_ids"][None])).logits
      assert int(logits[0, len(ex["inputs"])].argmax()) == int(single[0])


def test_served_decoder_only_rows_start_with_the_models_bos():
  """infer builds `[bos] + input` like training's `decoder_prompt_tokens`."""
  import types  # pylint: disable=g-import-not-at-top
  from prompt_tuning.inference import serving  # pylint: disable=g-import-not-at-top
  fake = types.SimpleNamespace(
      model=types.SimpleNamespace(config=types.SimpleNamespace(bos_token_id=7),
                                  prompt=None),
      eos_id=2, _sharding=None)
  tokens = np.array([[5, 6, 0], [9, 0, 0]], np.int32)
  rows, kwargs = serving.PromptServer._causal_rows(  # pylint: disable=protected-access
      fake, tokens, np.array([2, 1]), {"prompt_index": None})
  np.testing.assert_array_equal(rows[:, 0], [7, 7])
  np.testing.assert_array_equal(kwargs["attention_mask"],
                                [[1, 1, 1, 0], [1, 1, 0, 0]])
  assert kwargs["eos_id"] == 2 and "prompt_index" not in kwargs
