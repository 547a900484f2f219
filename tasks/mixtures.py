"""T5's leave-one-out co-training mixtures, over the tasks registered here.

T5 (`t5.data.mixtures`) trains on every supervised task but one, then
fine-tunes on the one left out: `leave_one_out_<task>`. Its supervised set is
GLUE, SuperGLUE, SQuAD, CNN/DailyMail, three WMT pairs and C4; this package
registers no CNN/DailyMail, WMT or C4 task, so those members are left out (a
documented difference). Rates are T5's: the GLUE/SuperGLUE training-set
sizes, SQuAD its training-set size (T5's `rate_num_examples`, uncapped), and
T5's de-duplication halves every task named with both "glue" and "rte" when a
single task (not a whole benchmark) is left out.
"""
from tasks import glue
from tasks import registry
from tasks import super_glue

SQUAD = "squad_v010_allanswers"
SQUAD_TRAIN_EXAMPLES = 87_599.  # TFDS squad/v1.1 train.


def _glue_rates():
  return {f"glue_{name}_v002": rate
          for name, rate in glue.PROPORTIONAL_RATES.items()}


def _dedupe(name: str, rate: float) -> float:
  return rate * 0.5 if ("glue" in name and "rte" in name) else rate


def register() -> None:
  """Registers `leave_one_out_{glue_v002_proportional,
  super_glue_v102_proportional,squad_v010_allanswers}`."""
  glue_rates = _glue_rates()
  sg_rates = dict(super_glue.PROPORTIONAL_RATES)
  squad_rates = {SQUAD: SQUAD_TRAIN_EXAMPLES}
  left_out = {
      # A whole benchmark left out: the rest without de-duplication.
      "glue_v002_proportional": {**sg_rates, **squad_rates},
      "super_glue_v102_proportional": {**glue_rates, **squad_rates},
      SQUAD: {name: _dedupe(name, rate)
              for name, rate in {**glue_rates, **sg_rates}.items()},
  }
  for name, rates in left_out.items():
    registry.add_mixture(f"leave_one_out_{name}", sorted(rates.items()))
