"""The device check (`benchmarks/device_check.sh`): its CPU dry run end to end, and
the arithmetic its GPU run reports (MFU against the chip table, n/a when unknown).

No timing is asserted: the dry run checks that both sides ran, that every field of
the JSON and the markdown is written, and that the planner's estimate is there to
calibrate against (a CPU has no memory statistics: "n/a").
"""
import json
import math
import pathlib
import subprocess

import pytest

from benchmarks import common, device_check, flops

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_mfu_uses_the_chip_peak_and_unknown_chips_say_na():
  shapes = device_check.FULL["base"]
  side = device_check.summarize(shapes, {"step_seconds_each": [2.0, 0.5, 1.0],
                                         "device_kind": "NVIDIA A100-SXM4-80GB"})
  model_flops = flops.train_step_flops(shapes)["total"]
  assert side["step_seconds"] == 1.0  # the median
  assert side["tokens_per_s"] == 32 * (512 + 8)
  assert math.isclose(side["mfu"], model_flops / 312e12)
  unknown = device_check.summarize(shapes, {"step_seconds_each": [1.0],
                                            "device_kind": "Some New Chip"})
  assert unknown["mfu"] is None and unknown["peak_bf16_flops"] is None
  # The full run's shapes are the issue's: bf16, batch 32, 512 + 100 prompt.
  for name in ("base", "large"):
    s = device_check.FULL[name]
    assert (s.batch, s.inputs, s.prompt) == (32, 512, 100)
    assert s.model_config().frozen_dtype.__name__ == "bfloat16"


def test_dry_run_reports_both_sides_and_the_planner_estimate(tmp_path):
  assert device_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
  record = json.loads((tmp_path / "device_check.json").read_text())
  assert record["meta"]["dry_run"] is True
  row = record["results"]["tiny"]
  for side in ("jax", "peft"):
    r = row[side]
    assert r["step_seconds"] > 0 and math.isfinite(r["loss"]), side
    assert len(r["step_seconds_each"]) == device_check.DRY["tiny"].steps
    assert r["tokens_per_s"] == pytest.approx(
        device_check.DRY["tiny"].tokens_per_step / r["step_seconds"])
    assert r["device_kind"].lower() == "cpu" and r["mfu"] is None
    assert r["peak_memory_bytes"] is None  # no device statistics on a CPU
  assert row["jax"]["framework"].startswith("JAX")
  assert "PEFT" in row["peft"]["framework"]
  calibration = row["planner_calibration"]
  assert calibration["estimate_bytes"] == row["jax"]["planner_bytes"]["estimate"] > 0
  assert calibration["measured_over_estimate"] is None
  text = (tmp_path / "device_check.md").read_text()
  assert "| tiny | JAX" in text and "PEFT | cpu |" in text and "n/a" in text
  assert "Planner calibration" in text


def test_the_shell_script_installs_the_cuda_extra_and_runs_the_check():
  script = REPO / "benchmarks" / "device_check.sh"
  subprocess.run(["bash", "-n", str(script)], check=True)
  text = script.read_text()
  assert '.[cuda' in text and "benchmarks.device_check" in text
  constraints = (REPO / "requirements" / "constraints.txt").read_text()
  assert "jax-cuda12-plugin==" in constraints and "jax-cuda12-pjrt==" in constraints
