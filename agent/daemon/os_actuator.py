"""The controller's OS actuator in the daemon: an OS trial step (agent/control/os_trials.OsStep) run through the
tuning service, so it is journaled, serialized with every other host mutation on the main loop, and rolled back
at the next start if the daemon dies while the trial is open.

The controller's tick thread waits for the step here; the tuning lock is taken on the main loop, never while
waiting for it (see tuning_service.py)."""

from __future__ import annotations

from agent.control.os_trials import OsStep
from agent.daemon.tuning_service import TuningService


class TuningOsActuator:
    def __init__(self, tuning: TuningService) -> None:
        self.tuning = tuning

    def run(self, step: OsStep) -> None:
        self.tuning.os_trial(step.op, step.trial.name, step.trial.fragment)
