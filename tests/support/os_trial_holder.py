"""Opens an OS trial through the daemon's own path (TuningService.os_trial, as the controller's OS actuator calls
it) on the daemon config's host tree and state dir, says "open" and waits to be killed: a daemon that dies with a
trial in progress, for the crash tests (tests/process/test_os_trial_crash.py, tests/kernel/test_os_trial_real.py).

    python -m tests.support.os_trial_holder DAEMON_CONFIG TRIAL_NAME
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.config import load_settings
from agent.control.os_trials import BUILDERS
from agent.daemon.events import EventLog
from agent.daemon.tuning_service import TuningService

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def trial_held_open(config: Path, name: str) -> Iterator[str]:
    """A process holding OS trial `name` open (yields its "open ..." line); SIGKILLed on exit, as a daemon that
    dies mid-trial."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTTUNE_")}
    holder = subprocess.Popen([sys.executable, "-m", "tests.support.os_trial_holder", str(config), name],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.startswith("open"), line + holder.stdout.read()
        yield line
    finally:
        os.kill(holder.pid, signal.SIGKILL)   # our own child, by PID
        assert holder.wait(30) == -signal.SIGKILL


def main(argv: list[str]) -> int:
    settings = load_settings(Path(argv[0]))
    tuning = TuningService(settings, EventLog())
    built = BUILDERS[argv[1]](tuning.host_facts())
    if isinstance(built, str):
        print(f"not applicable: {built}", flush=True)
        return 3
    tuning.os_trial("apply", built.name, built.fragment)
    print(f"open {built.before} -> {built.after}", flush=True)
    time.sleep(300)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
