"""Gin registrations of the decoders (library code in `decoding.py` stays gin-free).

Importing this module registers, under the gin module name `decoding`:

  decoding.greedy_decode   decoding.beam_search   decoding.sample_decode

The gin files in `configs/decoding/` import it and set the macro `DECODE_FN` to one
of them, with its options bound (beam size, length penalty, temperature, …). The
configured callable keeps the library signature, e.g.

  DECODE_FN(model, params, tokens, max_decode_length=L, prompt_index=None)
  decoding.predict(model, params, batch, DECODE_FN)      # the trainer's call

(`sample_decode` also needs `rng=` at call time; `predict(..., rng=...)` passes it).
"""
import gin

from prompt_tuning import decoding

greedy_decode = gin.external_configurable(decoding.greedy_decode,
                                          name="greedy_decode", module="decoding")
beam_search = gin.external_configurable(decoding.beam_search, name="beam_search",
                                        module="decoding")
sample_decode = gin.external_configurable(decoding.sample_decode,
                                          name="sample_decode", module="decoding")
