"""Gin registrations of the methods, prompt initializers and optimizers.

Library modules stay gin-free; importing this module registers them under stable
names (the gin files in `configs/methods/` and `configs/prompts/` import it):

  methods.prompt_tuning  methods.prefix_tuning  methods.lopa
  methods.model_tuning   methods.prompt_design
  methods.lora  methods.ia3  methods.p_tuning_v2  methods.per_layer_prompt
  methods.partial_tuning
  prompt_init.random_uniform  prompt_init.sampled_vocab  prompt_init.class_labels
  prompt_init.from_text       prompt_init.from_file
  optim.adafactor  optim.adafactor_prompt_tuning  optim.adafactor_model_tuning
  optim.adamw      optim.adamw_prefix_tuning      optim.adamw_lopa
  optim.adamw_lora optim.adafactor_ia3  optim.adamw_p_tuning_v2  optim.adamw_bitfit
  optim.frozen     optim.linear_schedule          optim.trainable_regexes
"""
import gin

from prompt_tuning import optim as _optim
from prompt_tuning.methods import (baselines, deep_prompt, ia3, initializers, lopa, lora,
                                   prefix, prompt)

_REGISTRATIONS = {
    "methods": [prompt.prompt_tuning, prefix.prefix_tuning, lopa.lopa,
                baselines.model_tuning, baselines.prompt_design, lora.lora, ia3.ia3,
                prefix.p_tuning_v2, deep_prompt.per_layer_prompt,
                baselines.partial_tuning],
    "prompt_init": [initializers.random_uniform, initializers.sampled_vocab,
                    initializers.class_labels, initializers.from_text,
                    initializers.from_file],
    "optim": [_optim.adafactor, _optim.adafactor_prompt_tuning,
              _optim.adafactor_model_tuning, _optim.adamw, _optim.adamw_prefix_tuning,
              _optim.adamw_lopa, _optim.adamw_lora, _optim.adafactor_ia3,
              _optim.adamw_p_tuning_v2, _optim.adamw_bitfit, _optim.frozen,
              _optim.linear_schedule,
              _optim.trainable_regexes],
}

# name → the registered (gin-wrapped) callable, e.g. CONFIGURABLES['methods.lopa'].
CONFIGURABLES = {
    f"{module}.{fn.__name__}": gin.external_configurable(fn, module=module)
    for module, fns in _REGISTRATIONS.items() for fn in fns
}
