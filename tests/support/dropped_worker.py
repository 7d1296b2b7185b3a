"""A real worker (python's http.server) under the real supervisor, placed on a one-node VM and dropped to
`run_as`: what the root-tier tests check the kernel's view of (privilege drop, /proc visibility)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from agent.bench.llama_local import free_port
from agent.policy.model import WorkerSpec
from agent.worker.prepare import prepare_worker
from agent.worker.privdrop import RunAs, resolve_run_as
from agent.worker.supervisor import RestartPolicy, Supervisor
from tests.support.worker_facts import one_node_vm
from tests.support.worker_fakes import worker_python


def dropped_http_supervisor(run_as: RunAs) -> Supervisor:
    """The supervisor of an http.server worker that runs as run_as (not started yet)."""
    port = free_port()
    spec = WorkerSpec(engine="command", port=port, health_url=f"http://127.0.0.1:{port}/",
                      argv=[worker_python(), "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", "/"])
    prepared = prepare_worker(spec, one_node_vm(), run_as=run_as)
    return Supervisor(prepared.spec, prepared.build, policy=RestartPolicy(ready_timeout_s=60))


@contextlib.contextmanager
def running_dropped_http_worker() -> Iterator[tuple[Supervisor, RunAs, int]]:
    """(supervisor, identity, worker pid) of a ready worker under the worker user; stopped on the way out."""
    run_as = resolve_run_as()
    assert run_as is not None and run_as.uid != 0
    sup = dropped_http_supervisor(run_as)
    sup.start()
    try:
        assert sup.wait_ready(60), sup.status().reason
        assert sup.pid is not None
        yield sup, run_as, sup.pid
    finally:
        sup.stop()
