"""Running ``sycam-dsl`` in a subprocess and stopping it with a signal, for the tests of Ctrl-C,
SIGTERM and SIGHUP. The child starts with the signals at their defaults, whatever this process
inherited; one that does not end in time has its threads' stacks dumped (faulthandler on SIGUSR1)
into the failure, with this process's signal state."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: ``python -c`` running the CLI like ``python -m sycam_dsl.cli`` started from a terminal: SIGINT and
#: SIGHUP at their defaults (a suite started in the background or under ``nohup`` passes them on
#: ignored, and the CLI rightly leaves an ignored signal ignored: both tests timed out that way), and
#: SIGUSR1 dumping every thread's stack
CLI_WITH_STACK_DUMPS = ("import faulthandler, runpy, signal, sys; "
                        "signal.signal(signal.SIGINT, signal.default_int_handler); "
                        "signal.signal(signal.SIGHUP, signal.SIG_DFL); "
                        "faulthandler.register(signal.SIGUSR1, all_threads=True); "
                        "sys.argv[0] = 'sycam-dsl'; runpy.run_module('sycam_dsl.cli', run_name='__main__')")


def _signal_state() -> str:
    """This process's handlers and blocked signals (a child inherits ignored and blocked ones)."""
    names = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    handlers = ", ".join(f"{s.name}={signal.getsignal(s)}" for s in names)
    return f"{handlers}; blocked: {sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))}"


def interrupt_cli(args: list[str], sig: int, ready: Path, *, cwd: Path, env: dict | None = None,
                  timeout: float = 240) -> tuple[int, str]:
    """Start ``sycam-dsl ARGS``, send ``sig`` once ``ready`` exists (or the child ended), and return its
    exit code and stderr; fail with its stacks when it runs ``timeout`` seconds past the signal."""
    proc = subprocess.Popen([sys.executable, "-c", CLI_WITH_STACK_DUMPS, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not ready.exists() and proc.poll() is None and time.monotonic() - t0 < timeout:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        sent = time.monotonic()
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # faulthandler writes every thread's stack to stderr
            time.sleep(2)
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"sycam-dsl still ran {time.monotonic() - sent:.0f} s after signal {sig}; this process's "
                        f"signal state: {_signal_state()}; its stderr's end:\n{err[-6000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err
