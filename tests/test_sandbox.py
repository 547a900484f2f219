"""tasks.sandbox: hostile programs fail only themselves and the harness survives.

Every case runs a real program in the sandbox; the destructive ones aim at a canary
directory outside the sandbox (never at anything that matters if isolation broke).
"""
import os
import pathlib
import secrets
import socket
import time

import pytest

from tasks import sandbox

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FAST = sandbox.Limits(timeout_seconds=3.0, memory_bytes=512 << 20, max_processes=16)
pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/ns/net"),
                                reason="Linux namespaces required")


def run(source, limits=FAST, **kwargs):
  return sandbox.run_program(source, limits, **kwargs)


def _leftover_processes():
  """Processes still running this checkout's sandbox child."""
  found = []
  for pid in os.listdir("/proc"):
    if pid.isdigit():
      try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
          if sandbox.CHILD.encode() in f.read():
            found.append(int(pid))
      except OSError:
        pass
  return found


@pytest.fixture
def canary():
  """A directory with a file outside /tmp (which the sandbox replaces)."""
  path = REPO_ROOT / f".sandbox_canary_{secrets.token_hex(4)}"
  path.mkdir()
  (path / "keep.txt").write_text("precious")
  yield path
  for child in path.iterdir():
    child.unlink()
  path.rmdir()


def test_passing_and_failing_programs():
  ok = run("def f(x):\n  return x + 1\nprint('out')\nassert f(1) == 2\n")
  assert ok.status == "passed" and ok.passed and ok.stdout.strip() == "out"
  bad = run("def f(x):\n  return x\nassert f(1) == 2\n")
  assert bad.status == "failed" and not bad.passed and "AssertionError" in bad.stderr


@pytest.mark.parametrize("source", ["import sys\nsys.exit(0)\nassert False",
                                    "import os\nos._exit(0)\nassert False",
                                    "raise SystemExit"])
def test_exiting_early_is_never_a_pass(source):
  result = run(source)
  assert result.status == "exited" and not result.passed


def test_infinite_loop_is_killed_at_the_timeout():
  start = time.monotonic()
  result = run("while True:\n  pass\n")
  assert result.status == "timeout"
  assert time.monotonic() - start < FAST.timeout_seconds + 5
  assert not _leftover_processes()


def test_fork_bomb_is_bounded_and_cleaned_up():
  result = run("import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n"
               "    pass\n")
  assert result.status == "timeout"
  assert not _leftover_processes()


def test_background_child_dies_with_the_program():
  result = run("import os, time\nif os.fork() == 0:\n  time.sleep(60)\n")
  assert result.passed  # the parent ran to the end
  time.sleep(0.2)
  assert not _leftover_processes()


def test_huge_allocation_fails_its_example():
  result = run("x = bytearray(8 << 30)\n")
  assert result.status == "failed" and "MemoryError" in result.stderr


def test_segfault_fails_its_example():
  result = run("import ctypes\nctypes.string_at(0)\n")
  assert result.status == "killed"


def test_output_flood_is_capped():
  result = run("while True:\n  print('x' * 1000)\n")
  assert not result.passed and len(result.stdout) <= sandbox.OUTPUT_LIMIT


@pytest.mark.parametrize("user_namespace", [False, True])
def test_cannot_delete_or_write_outside_its_directory(canary, user_namespace):
  result = run(
      "import os, shutil\n"
      f"os.system('rm -rf {canary}')\n"
      f"try:\n  shutil.rmtree('{canary}')\nexcept OSError as e:\n  print('rmtree', e)\n"
      f"try:\n  open('{canary}/keep.txt', 'w').write('gone')\n"
      "except OSError as e:\n  print('write', e)\n"
      f"open('{canary}/new.txt', 'w')\n", user_namespace=user_namespace)
  assert result.status == "failed"
  assert (canary / "keep.txt").read_text() == "precious"
  assert sorted(p.name for p in canary.iterdir()) == ["keep.txt"]
  # Its own directory and /tmp are writable (and private).
  own = run("open('here.txt', 'w').write('x')\nopen('/tmp/t.txt', 'w').write('y')\n"
            "import os\nassert os.listdir('/tmp') == ['work', 't.txt'] or "
            "sorted(os.listdir('/tmp')) == ['t.txt', 'work']\n",
            user_namespace=user_namespace)
  assert own.passed, own.stderr


@pytest.mark.parametrize("user_namespace", [False, True])
def test_cannot_read_the_harness_environment(monkeypatch, user_namespace):
  secret = "s3cr3t-" + secrets.token_hex(8)
  monkeypatch.setenv("PT_SANDBOX_TEST_SECRET", secret)
  result = run(
      "import os\nprint(dict(os.environ))\n"
      "for pid in os.listdir('/proc'):\n"
      "  if pid.isdigit():\n"
      "    try:\n      print(open(f'/proc/{pid}/environ', 'rb').read())\n"
      "    except OSError as e:\n      print(e)\n"
      f"print(open('/proc/{os.getpid()}/environ', 'rb').read())\n",
      user_namespace=user_namespace)
  assert secret not in result.stdout + result.stderr
  assert "PT_SANDBOX_TEST_SECRET" not in result.stdout + result.stderr


@pytest.mark.parametrize("user_namespace", [False, True])
def test_no_network_even_to_the_hosts_loopback(user_namespace):
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), "
                 "timeout=1)\n", user_namespace=user_namespace)
    assert result.status == "failed"
    with pytest.raises(BlockingIOError):
      server.accept()


def test_cannot_regain_privileges():
  result = run("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "assert libc.mount(None, b'/', None, 32 | 4096, None) != 0\n"
               "import os\nassert os.getuid() != 0 or open('/proc/self/status')"
               ".read().count('CapEff:\\t0000000000000000') == 1\n"
               "try:\n  open('/proc/sys/kernel/hostname', 'w').write('x')\n"
               "  raise RuntimeError('sysctl written')\nexcept OSError:\n  pass\n")
  assert result.passed, result.stderr


def test_harness_survives_a_mixed_batch():
  # Signals aimed at the harness: PID 1 is the program's own namespace init (which
  # ignores them), its process group has no process the program may signal; kill(-1)
  # finds nobody to signal and raises.
  programs = ["assert 1 + 1 == 2", "while True: pass",
              "import os\nos.kill(1, 9)\nos.killpg(0, 9)\nos.kill(-1, 9)",
              "x = [0] * (10 ** 10)", "assert 2 + 2 == 4"]
  statuses = [run(p).status for p in programs]
  assert statuses == ["passed", "timeout", "failed", "failed", "passed"]
  assert not _leftover_processes()


def test_large_output_still_passes_and_is_truncated():
  result = run("print('y' * 300000)\nassert True\n")
  assert result.passed
  assert len(result.stdout) == sandbox.OUTPUT_LIMIT


def test_cleanup_of_a_hostile_directory_never_follows_links():
  mode = os.stat("/etc/passwd").st_mode
  result = run("import os\nos.symlink('/etc/passwd', 'link')\nos.mkdir('d')\n"
               "open('d/f', 'w').write('x')\nos.chmod('d', 0)\n")
  assert result.passed
  assert os.stat("/etc/passwd").st_mode == mode


def test_writes_stay_in_a_small_memory_tmpfs():
  result = run("for i in range(40):\n  open(f'f{i}', 'wb').write(b'x' * (1 << 20))\n")
  assert result.status == "failed" and "No space left" in result.stderr


def test_setup_failure_raises_before_running_the_program():
  with pytest.raises(sandbox.SandboxUnavailableError, match="could not isolate"):
    run("print('never')", sandbox.Limits(tmpfs_bytes=-1))
