"""Side-by-side measurements (issue 9); `python benchmarks/run_all.py` runs them all."""
