"""scripts/count_method_params.py counts what each method trains (checked against
the formulas for LoRA, IA3, per-layer prompts and folded prefixes on `tiny`)."""
from prompt_tuning.methods import deep_prompt, ia3, lora, prefix
from prompt_tuning.models.config import preset

from conftest import load_script


def test_counts_match_the_formulas(capsys):
  script = load_script("count_method_params")
  c = preset("tiny")  # H=32, 4 heads of 8, MLP 64, 2+2 layers
  h, kv, f, layers = c.emb_dim, c.num_heads * c.head_dim, c.mlp_dim, 2
  attentions = layers + 2 * layers  # encoder self; decoder self + cross
  got = script.counts(lora.lora(rank=8), "tiny")
  assert got["trained"] == attentions * 2 * (h * 8 + 8 * kv)
  assert got["inference"] == got["trained"]
  assert script.counts(ia3.ia3(), "tiny")["trained"] == attentions * 2 * kv + 2 * layers * f
  assert script.counts(deep_prompt.per_layer_prompt(length=5), "tiny")["trained"] == (
      (1 + layers) * 5 * h)
  folded = script.counts(prefix.prefix_tuning(length=5, hidden_dim=16), "tiny")
  assert folded["inference"] == 2 * layers * 2 * 5 * kv
  assert folded["trained"] > folded["inference"]
  assert script.main(["--presets", "tiny", "--markdown"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("| method | tiny: trained (% of frozen) |")
  assert "| LoRA (r=8, q,v) |" in out
