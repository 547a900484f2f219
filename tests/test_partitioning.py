"""Partitioning: the rule table, a 2x4 mesh vs one device, two processes vs one."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import partitioning_worker
from conftest import free_port, wait_for
from prompt_tuning import partitioning

WORKER = pathlib.Path(partitioning_worker.__file__)
REPO = WORKER.parents[1]


class _FakeMesh:
  shape = {"data": 2, "model": 4}


def test_rule_table_maps_t5x_names_and_replicates_what_does_not_divide():
  rules = partitioning.rules()
  mesh = _FakeMesh()
  spec = lambda names, shape: tuple(partitioning.mesh_axes(names, shape, mesh, rules))
  assert spec(("vocab", "embed"), (32128, 768)) == ("model", None)
  assert spec(("embed", "joined_kv"), (768, 768)) == (None, "model")
  assert spec(("embed", "mlp"), (768, 2048)) == (None, "model")
  assert spec(("heads", "relpos_buckets"), (12, 32)) == ("model", None)
  assert spec(("prompt", "embed"), (100, 768)) == (None, None)
  # 6 heads on a 4-way model axis: replicated instead of failing to compile.
  assert spec(("heads", "relpos_buckets"), (6, 32)) == (None, None)
  # A name without a rule is replicated; a mesh axis is used once per array.
  assert spec(("unknown_axis", "mlp"), (8, 8)) == (None, "model")
  # Rules apply in table order: `vocab` comes before `mlp`, as in T5X.
  assert spec(("mlp", "vocab"), (8, 8)) == (None, "model")
  # Overrides come first and replace the default entry.
  overridden = partitioning.rules(overrides=[("embed", "model")])
  assert dict(overridden)["embed"] == "model"
  assert tuple(partitioning.mesh_axes(("prompt", "embed"), (100, 768), mesh,
                                      overridden)) == (None, "model")


def test_every_parameter_needs_logical_names_and_batch_must_divide():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  mesh = partitioning.make_mesh(1)
  boxed = {"a": nn.Partitioned(jax.ShapeDtypeStruct((4, 2), np.float32),
                               names=("embed", "mlp")),
           "b": jax.ShapeDtypeStruct((3,), np.float32)}
  with pytest.raises(ValueError, match="b has no logical axis names"):
    partitioning.param_shardings(boxed, mesh, partitioning.rules())
  assert partitioning.check_batch_size(8, mesh) == 8
  with pytest.raises(ValueError, match="model_parallel=3 must divide"):
    partitioning.make_mesh(3, devices=[object()] * 4)


def _run_worker(args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=os.pathsep.join([str(REPO), str(WORKER.parent)]))
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen([sys.executable, str(WORKER)] + [str(a) for a in args],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Starts, at once: the 8-device worker (1-device and 2x4 runs) and two processes
  joined on loopback (a 2x2 mesh over 2 x 2 devices); returns their JSON results."""
  tmp = tmp_path_factory.mktemp("partitioning")
  port = free_port()
  outs = {"mesh": tmp / "mesh.json", 0: tmp / "p0.json", 1: tmp / "p1.json"}
  procs = {"mesh": _run_worker(["mesh", outs["mesh"], tmp])}
  for i in range(2):
    procs[i] = _run_worker(["process", i, port, outs[i], tmp / "multi"])
  logs = wait_for(procs)
  results = {"dir": tmp}
  for key, proc in procs.items():
    results[key] = (json.loads(outs[key].read_text()) if proc.returncode == 0
                    else f"worker {key} failed:\n{logs.get(key, '')[-4000:]}")
  return results


def _ok(result):
  assert not isinstance(result, str), result
  return result


def test_2x4_mesh_matches_one_device_and_really_shards(runs):
  result = _ok(runs["mesh"])
  assert result["mesh_shape"] == {"data": 2, "model": 4}
  np.testing.assert_allclose(result["sharded"]["losses"], result["single"]["losses"],
                             rtol=1e-5)
  for path, value in result["single"]["params"].items():
    np.testing.assert_allclose(result["sharded"]["params"][path], value, rtol=1e-4,
                               atol=1e-6, err_msg=path)
  kernel = result["kernel"]  # decoder/layers_0/mlp/wi_0/kernel [embed, mlp]
  assert kernel["spec"] == ["None", "model"]
  assert kernel["shard_shape"] == [kernel["shape"][0], kernel["shape"][1] // 4]


def test_2d_activation_partitioning_with_remat_matches_one_device(runs):
  result = _ok(runs["mesh"])
  np.testing.assert_allclose(result["two_d"]["losses"], result["single"]["losses"],
                             rtol=1e-5)
  for path, value in result["single"]["params"].items():
    np.testing.assert_allclose(result["two_d"]["params"][path], value, rtol=1e-4,
                               atol=1e-6, err_msg=path)
  # The residual stream [B, T, H]: batch over data; with 2-D activations H over model.
  assert result["residual_1d"] == ["data"]
  assert result["residual_2d"] == ["data", "None", "model"]


def test_t5x_2d_rule_tables_resolve_in_rule_order():
  mesh = _FakeMesh()
  spec = lambda rules, names, shape: tuple(
      partitioning.mesh_axes(names, shape, mesh, rules))
  act2 = partitioning.rules(activation_partitioning_dims=2)
  par2 = partitioning.rules(parameter_partitioning_dims=2)
  both = partitioning.rules(activation_partitioning_dims=2,
                            parameter_partitioning_dims=2)
  one = partitioning.rules()
  residual, kernel = ("batch", "length", "embed"), ("embed", "mlp")
  assert spec(one, residual, (8, 16, 64)) == ("data", None, None)
  assert spec(act2, residual, (8, 16, 64)) == ("data", None, "model")
  assert spec(par2, residual, (8, 16, 64)) == ("data", None, None)  # data is taken
  # `mlp` comes before `embed`: a kernel keeps model on mlp; 2-D params put embed
  # on data.
  assert spec(act2, kernel, (64, 128)) == (None, "model")
  assert spec(par2, kernel, (64, 128)) == ("data", "model")
  assert spec(both, kernel, (64, 128)) == ("data", "model")
  assert spec(both, ("embed",), (64,)) == ("model",)  # a norm scale
  assert spec(both, ("prompt", "embed"), (100, 64)) == (None, "model")
  with pytest.raises(ValueError, match="each must be 1 or 2"):
    partitioning.standard_rules(3, 1)


class _TpuCore:
  def __init__(self, i, coords, core):
    self.id, self.coords, self.core_on_chip = i, coords, core

  def __repr__(self):
    return f"d{self.id}"


def test_model_parallel_submesh_groups_physical_blocks():
  # A 2x2 chip torus with 2 cores per chip (a v3-8): submesh (1, 2, 1, 2) puts the
  # two cores of two chips in a column in one model group.
  devices, i = [], 0
  for y in range(2):
    for x in range(2):
      for core in range(2):
        devices.append(_TpuCore(i, (x, y, 0), core))
        i += 1
  grid = partitioning.submesh_grid(devices[::-1], (1, 2, 1, 2))
  groups = [sorted((d.coords, d.core_on_chip) for d in row) for row in grid]
  assert len(groups) == 2
  for x, group in enumerate(sorted(groups)):
    assert group == [((x, 0, 0), 0), ((x, 0, 0), 1), ((x, 1, 0), 0),
                     ((x, 1, 0), 1)]
  # Devices without coordinates: blocks of consecutive devices.
  plain = partitioning.submesh_grid(list(range(8)), (4,))
  assert plain.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
  with pytest.raises(ValueError, match="model_parallel_submesh=\\(3,\\)"):
    partitioning.submesh_grid(list(range(8)), (3,))


def test_two_processes_on_loopback_agree_with_one_process(runs):
  reference = _ok(runs["mesh"])["single"]  # the same run on one device
  results = [_ok(runs[i]) for i in range(2)]
  assert sorted(r["process_index"] for r in results) == [0, 1]
  for r in results:
    np.testing.assert_allclose(r["process"]["losses"], reference["losses"], rtol=1e-5)
    for path, value in reference["params"].items():
      np.testing.assert_allclose(r["process"]["params"][path], value, rtol=1e-4,
                                 atol=1e-6, err_msg=path)
    assert r["kernel"]["spec"] == ["None", "model"]
    # The multi-slice mesh: each half of `data` is one process's devices.
    assert r["hybrid"] == [[0, 0], [1, 1]]
  # Both processes saved the state together; process 0 alone wrote the numpy
  # export and the TensorBoard events.
  multi = runs["dir"] / "multi"
  assert (multi / "checkpoint_5").is_dir()
  assert (multi / "numpy_checkpoints" / "checkpoint_5").is_dir()
  assert len(list((multi / "train").glob("events.*"))) == 1
