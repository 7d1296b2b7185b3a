"""OS trials in the tuning engine (agent/tuning/trial.py) on fixture host trees: a trial is an apply transaction left
open; keeping commits it into the applied policy, ending it restores the host byte for byte, and a crash while it
is open is rolled back by the next recover (the daemon's start) like any interrupted apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.control.config import ControllerConfig
from agent.control.core import ControlCore
from agent.control.decisions import DecisionLog
from agent.control.os_trials import OsTrial, next_os_trial
from agent.errors import HostError, InputError
from agent.hostfs import HostPaths
from agent.policy.model import Policy
from agent.tuning import api
from agent.tuning.state import StateDir
from agent.tuning.trial import begin_trial, end_trial, keep_trial, open_trial
from tests.support.daemon_fixtures import services_for
from tests.support.trees import tree_state

THP_ALWAYS = Policy.model_validate({"name": "os-trial-thp", "thp": {"enabled": "always"}})
NUMA_OFF = Policy.model_validate({"name": "os-trial-numa", "sysctl": {"kernel.numa_balancing": 0}})


def root_of(paths: HostPaths) -> Path:
    return paths.procfs.parent


def thp(paths: HostPaths) -> str:
    return paths.sys("kernel/mm/transparent_hugepage/enabled").read_text()


def test_a_trial_is_an_open_transaction_and_ending_it_restores_the_host_byte_for_byte(host: HostPaths,
                                                                                        state_dir: Path) -> None:
    state = StateDir(state_dir)
    before = tree_state(root_of(host))
    assert "[madvise]" in thp(host)
    changes = begin_trial("thp", THP_ALWAYS, host, state)
    assert [(c.target, c.action) for c in changes] == [("thp.enabled", "change")]
    assert "[always]" in thp(host)
    journal = state.journal()
    assert open_trial(journal) == "thp" and api.status(state).interrupted
    assert end_trial("thp", state) is True
    assert tree_state(root_of(host)) == before
    assert open_trial(state.journal()) is None and state.journal().data.originals == []
    assert state.journal().data.txn is not None and state.journal().data.txn.status == "rolled_back"
    assert end_trial("thp", state) is False   # nothing open: nothing to undo


def test_a_kept_trial_joins_the_applied_policy_and_revert_restores_its_original(host: HostPaths,
                                                                               state_dir: Path) -> None:
    state = StateDir(state_dir)
    before = tree_state(root_of(host))
    api.apply_policy(Policy.model_validate({"name": "base", "sysctl": {"vm.swappiness": 10}}), host, state)
    begin_trial("thp", THP_ALWAYS, host, state)
    keep_trial("thp", THP_ALWAYS, host, state)
    data = state.journal().data
    assert data.txn is not None and data.txn.status == "committed" and open_trial(state.journal()) is None
    assert data.applied is not None and data.applied.policy == "base"
    assert {c.target: c.value for c in data.applied.changes} == {"vm.swappiness": "10", "thp.enabled": "always"}
    assert api.verify(state).ok
    api.revert(state)
    assert tree_state(root_of(host)) == before


def test_a_crash_during_a_trial_is_rolled_back_by_the_next_recover(host: HostPaths, state_dir: Path) -> None:
    """What the daemon's start does (rollback_interrupted -> recover_only) after a kill -9 mid-trial."""
    state = StateDir(state_dir)
    before = tree_state(root_of(host))
    begin_trial("numa_balancing", NUMA_OFF, host, state)
    assert host.sysctl("kernel.numa_balancing").read_text().strip() == "0"
    # the process dies here: nothing else runs; a new one starts
    note = api.recover_only(StateDir(state_dir))
    assert note is not None and "trial:numa_balancing" in note
    assert tree_state(root_of(host)) == before
    assert open_trial(state.journal()) is None


def test_another_apply_ends_the_trial_and_keep_then_says_so(host: HostPaths, state_dir: Path) -> None:
    state = StateDir(state_dir)
    begin_trial("thp", THP_ALWAYS, host, state)
    api.apply_policy(Policy.model_validate({"name": "other", "sysctl": {"vm.swappiness": 10}}), host, state)
    assert "[madvise]" in thp(host)
    with pytest.raises(HostError, match="not open any more"):
        keep_trial("thp", THP_ALWAYS, host, state)
    assert "[madvise]" in thp(host)


def test_one_trial_at_a_time_a_second_begin_ends_the_first(host: HostPaths, state_dir: Path) -> None:
    state = StateDir(state_dir)
    before = tree_state(root_of(host))
    begin_trial("thp", THP_ALWAYS, host, state)
    begin_trial("numa_balancing", NUMA_OFF, host, state)
    assert "[madvise]" in thp(host) and open_trial(state.journal()) == "numa_balancing"
    end_trial("numa_balancing", state)
    assert tree_state(root_of(host)) == before


def test_a_fragment_this_host_cannot_take_writes_nothing(host: HostPaths, state_dir: Path) -> None:
    state = StateDir(state_dir)
    before = tree_state(root_of(host))
    bad = Policy.model_validate({"name": "x", "thp": {"enabled": "always", "defrag": "always"},
                                 "kernel_cmdline": {"isolcpus": "1"}})
    with pytest.raises(InputError, match="not a change an OS trial can make"):
        begin_trial("thp", bad, host, state)
    assert tree_state(root_of(host)) == before and open_trial(state.journal()) is None


def test_the_daemon_runs_trials_as_mutations_and_a_stopped_controller_ends_its_open_trial(host: HostPaths,
                                                                                         tmp_path: Path) -> None:
    """TuningService.os_trial is what the controller's OS actuator calls; WorkerStack.stop_controller (reload,
    daemon stop) rolls back a trial whose measurement stopped with the controller."""
    services = services_for(host, tmp_path)
    before = tree_state(root_of(host))
    services.tuning.os_trial("apply", "thp", THP_ALWAYS)
    assert "[always]" in thp(host) and [e["kind"] for e in services.events.recent(1)] == ["os_trial"]

    class StoppedController:
        log = DecisionLog()  # its decisions stay counted in /metrics after it stops

        def close(self) -> None:
            pass

    services.stack.controller = StoppedController()  # type: ignore[assignment]
    services.stack.stop_controller()
    assert tree_state(root_of(host)) == before
    assert services.events.recent(1)[0]["kind"] == "os_trial_undone"
    assert services.tuning.end_os_trial() is None   # nothing open any more
    services.tuning.os_trial("apply", "thp", THP_ALWAYS)
    services.tuning.os_trial("keep", "thp", THP_ALWAYS)
    assert services.tuning.end_os_trial() is None and "[always]" in thp(host)
    assert services.tuning.verify()["ok"]


def test_an_open_trial_on_a_tunable_the_policy_owns_is_trial_not_drift(host: HostPaths, state_dir: Path) -> None:
    """base.yaml owns thp and kernel.numa_balancing: trying one of them is not drift (nor an interruption)."""
    state = StateDir(state_dir)
    api.apply_policy(Policy.model_validate({"name": "base", "thp": {"enabled": "madvise"},
                                            "sysctl": {"vm.swappiness": 10}}), host, state)
    begin_trial("thp", THP_ALWAYS, host, state)
    result = api.verify(state)
    assert result.ok and result.trial == "thp" and result.interrupted is None
    assert {i.target: i.state for i in result.items} == {"thp.enabled": "trial", "vm.swappiness": "held"}
    host.sysctl("vm.swappiness").write_text("60\n")   # other drift is still drift during a trial
    assert [i.target for i in api.verify(state).drift] == ["vm.swappiness"]


def test_the_drift_job_never_reapplies_over_an_open_trial(host: HostPaths, tmp_path: Path) -> None:
    policy = tmp_path / "owns-thp.yaml"
    policy.write_text("name: owns-thp\nthp:\n  enabled: madvise\nsysctl:\n  vm.swappiness: 10\n")
    services = services_for(host, tmp_path)
    services.tuning.apply_loaded(services.tuning.load_policy_ref(str(policy)))
    services.tuning.os_trial("apply", "thp", THP_ALWAYS)
    assert services.tuning.drift_check(reapply=True)["drifted"] == 0 and services.tuning.verify()["ok"]
    host.sysctl("vm.swappiness").write_text("60\n")
    assert services.tuning.drift_check(reapply=True)["drifted"] == 1
    assert "[always]" in thp(host) and open_trial(services.tuning._state().journal()) == "thp"
    services.tuning.os_trial("keep", "thp", THP_ALWAYS)   # the trial is still there to keep


def test_kept_trials_are_journaled_so_a_restarted_controller_does_not_flip_them_back(host: HostPaths,
                                                                                    tmp_path: Path) -> None:
    """After a keep, the host holds the trial's value: a builder run by a new controller would take it for the
    host's own and try the reverse. The journal remembers the kept names until a new apply or a revert."""
    services = services_for(host, tmp_path)
    services.tuning.os_trial("apply", "thp", THP_ALWAYS)
    services.tuning.os_trial("keep", "thp", THP_ALWAYS)
    assert services_for(host, tmp_path).tuning.kept_os_trials() == {"thp"}   # a new daemon reads it back
    core = ControlCore(ControllerConfig.model_validate({"ttft_p95_ms": 1000, "ladder": [], "os_trials": [
        OsTrial(name="thp", before={"thp.enabled": "always"}, after={"thp.enabled": "madvise"},
                fragment=THP_ALWAYS)]}), {}, 4, 0.0)
    core.os_kept |= services.tuning.kept_os_trials()
    assert next_os_trial(core.cfg.os_trials, core.tabu, core.os_kept, 0.0) is None
    assert core.status()["os_trials"] == {"thp": "kept"}
    services.tuning.revert()
    assert services.tuning.kept_os_trials() == set()
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\nsysctl:\n  vm.swappiness: 10\n")
    services.tuning.os_trial("apply", "thp", THP_ALWAYS)
    services.tuning.os_trial("keep", "thp", THP_ALWAYS)
    services.tuning.apply_loaded(services.tuning.load_policy_ref(str(policy)))
    assert services.tuning.kept_os_trials() == set()   # a new apply replaced what the trial had kept
