"""Opens an OS trial through the daemon's own path (TuningService.os_trial, as the controller's OS actuator calls
it) on the daemon config's host tree and state dir, says "open" and waits to be killed: a daemon that dies with a
trial in progress, for the crash tests (tests/process/test_os_trial_crash.py, tests/kernel/test_os_trial_real.py).

    python -m tests.support.os_trial_holder DAEMON_CONFIG TRIAL_NAME
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from agent.config import load_settings
from agent.control.os_trials import BUILDERS
from agent.daemon.events import EventLog
from agent.daemon.tuning_service import TuningService


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
