"""Markdown table of the planner results in benchmarks/results/plan/*.json.

  python benchmarks/plan_table.py [DIR]     (run benchmarks/plan_table.sh first)

One row per planned setting; the fit columns compare the planner's estimate with
24 GiB (8 x 24 GB GPUs), 16 GiB (a v3-8 core, 16 GB GPUs) and 14 GiB (the 16-device
target). `scan` says whether the layers were scanned (`T5Config.scan_layers`: the
same memory, a much faster compile), `micro` the microbatches per step.
"""
import json
import pathlib
import sys

GIB = 2.0**30
ORDER = {"large": 0, "xl": 1, "xxl": 2}


def rows(directory: pathlib.Path):
  results = [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]
  results.sort(key=lambda r: (ORDER.get(r["model"], 9), bool(r.get("scan_layers")),
                              r["devices"], r["remat_policy"] != "none",
                              -int(r.get("num_microbatches") or 1), r["frozen_dtype"],
                              -_act_dims(r)))
  for r in results:
    b = r["bytes_per_device"]
    est = b["estimate"] / GIB
    yield ("| {model} | {devices} ({data}x{model_axis}) | {scan} | {micro} | {remat} | "
           "{frozen} | {act}-D | {fz:.2f} | {tr:.3f} | {res:.2f} | {lay:.2f} | {est:.2f} | "
           "{temp:.1f} | {fits} |").format(
               model=r["model"], devices=r["devices"], data=r["mesh"]["data"],
               model_axis=r["mesh"]["model"], remat=r["remat_policy"],
               scan="yes" if r.get("scan_layers") else "no",
               micro=int(r.get("num_microbatches") or 1),
               frozen=r["frozen_dtype"], act=_act_dims(r), fz=b["frozen"] / GIB,
               tr=(b["trainable"] + b["optimizer_state"]) / GIB,
               res=b["saved_residuals"] / GIB, lay=b["recompute"] / GIB, est=est,
               temp=b["xla_temp"] / GIB,
               fits=" / ".join("yes" if est <= limit else "no" for limit in (24, 16, 14)))


def _act_dims(result) -> int:
  rules = {name: axis for name, axis in result["axis_rules"][::-1]}
  return 2 if rules.get("embed") == "model" else 1


HEADER = ("| model | devices (data x model) | scan | micro | remat | frozen weights | "
          "activations | "
          "frozen GiB | trainable + opt GiB | saved residuals GiB | recompute GiB | "
          "estimate GiB | XLA:CPU temp GiB | fits 24 / 16 / 14 GiB |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv):
  directory = pathlib.Path(argv[1] if len(argv) > 1 else
                           pathlib.Path(__file__).parent / "results" / "plan")
  print(HEADER)
  for row in rows(directory):
    print(row)


if __name__ == "__main__":
  main(sys.argv)
