"""Giving freed host memory back to the operating system.

Loading a checkpoint reads every tensor into numpy, copies it into a device
buffer and frees the numpy copy; compiling a train step allocates and frees
hundreds of MiB. glibc keeps such freed pages in the process (they still count in
its resident set) until `malloc_trim` returns them. Calling it after loading and
after the first compile keeps a run's steady-state footprint at what it uses:
~300 MiB less at T5 1.1 small (docs/BENCHMARKS.md, "Memory").
"""
import ctypes
import functools
import sys


@functools.lru_cache(maxsize=None)
def _malloc_trim():
  if not sys.platform.startswith("linux"):
    return None
  try:
    return ctypes.CDLL("libc.so.6").malloc_trim
  except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to do
    return None


def release_freed() -> bool:
  """`malloc_trim(0)` where glibc has it; True when memory was returned."""
  trim = _malloc_trim()
  return bool(trim(0)) if trim is not None else False
