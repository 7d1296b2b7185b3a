"""From a policy's worker section and the host facts to something the supervisor can run: resolve the model,
read its metadata, place the worker, fill the knobs the policy left open from the fit advisor, and build the
launch command for any (later, changed) spec.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.httpguard import is_loopback
from agent.inspect.models import HostFacts
from agent.model_files import resolve_model
from agent.policy.model import WeightsSpec, WorkerSpec
from agent.tunable.weights_pool import mlock_problem
from agent.worker.binding import BindPreference
from agent.worker.engines import engine_for
from agent.worker.fit import FitReport, device_memory, plan_fit
from agent.worker.gguf_meta import GgufInfo, read_gguf
from agent.worker.launch import Engine, Launch
from agent.worker.placement import Placement, plan_placement
from agent.worker.privdrop import RunAs, check_launch, check_readable

log = logging.getLogger("hosttune.worker")


@dataclass
class PreparedWorker:
    spec: WorkerSpec  # as the policy gave it, with ctx/parallel filled by the fit advisor when left open
    engine: Engine
    facts: HostFacts
    paths: HostPaths
    model: Path | None
    info: GgufInfo | None
    placement: Placement
    fit: FitReport | None
    headroom_pct: float = 10.0
    notes: list[str] = field(default_factory=list)
    allow_remote: bool = False  # the daemon config's worker.allow_remote: may the worker listen off loopback?
    run_as: RunAs | None = None  # the unprivileged user the worker runs as (None: not root, nothing to drop)
    staged_model: Path | None = None  # the model's copy in the hugepage pool (agent.tuning.weights): launched on

    def launch_model(self, spec: WorkerSpec, model: Path | None) -> Path | None:
        """The file the engine opens: the staged copy while the spec still names the model that was staged and
        still asks for hugetlbfs backing (a reload may change either), and only while the copy still exists: a
        revert unstages it under a running worker, and the next start then maps the GGUF from the page cache."""
        if self.staged_model is not None and model == self.model and spec.weights.backing == "hugetlbfs":
            if self.staged_model.is_file():
                return self.staged_model
            log.warning("the staged weights %s are gone (unstaged by a revert?): the worker maps %s from the page "
                        "cache", self.staged_model, model)
            self.notes.append(f"staged weights {self.staged_model} gone: launched on {model}")
            self.staged_model = None
        return model

    def build(self, spec: WorkerSpec) -> Launch:
        """Launch for `spec` (the supervisor calls this for every start, and after restart(new_spec)). A changed
        model is resolved again, a changed placement re-planned, and open knobs sized like the first time."""
        check_host(spec, self.allow_remote)
        model, info = self.model, self.info
        if spec.model != self.spec.model or spec.engine != self.spec.engine:
            model, info, _ = _model(spec)
        if model is not None:
            check_readable(self.launch_model(spec, model) or model, self.run_as)
        placement = self.placement
        if (model, spec.placement, spec.threads, spec.gpu, spec.gpu_layers) != (
                self.model, self.spec.placement, self.spec.threads, self.spec.gpu, self.spec.gpu_layers):
            placement = plan_placement(self.facts, spec, model, paths=self.paths,
                                       model_bytes=info.weight_bytes if info else None)
        if info is not None:
            spec, _, _ = _size(spec, info, self.facts, placement, self.headroom_pct)
        launch = self.engine.launch(spec, self.launch_model(spec, model), placement)
        check_launch(launch.argv, len(launch.binding.prefix), launch.env, self.run_as)
        return launch


def check_host(spec: WorkerSpec, allow_remote: bool) -> None:
    """A worker listening off loopback serves anyone on the network, without the gateway's limits or the API's
    token: only when the daemon config (not the policy) says worker.allow_remote."""
    if not allow_remote and not is_loopback(spec.host):
        raise InputError(f"{spec.host!r} is not a loopback address: the daemon config must set "
                         "worker.allow_remote: true for a worker reachable from the network", field="worker.host")


def fit_device(facts: HostFacts, placement: Placement) -> str:
    """The memory the worker will live in: its GPU, its NUMA node on multi-node hosts, else the host."""
    if placement.gpu is not None:
        return f"gpu:{placement.gpu}"
    if placement.node is not None and placement.membind and len(facts.cpu.numa_nodes) > 1:
        return f"cpu:{placement.node}"
    return "cpu"


def _model(spec: WorkerSpec) -> tuple[Path | None, GgufInfo | None, list[str]]:
    if spec.engine == "command" and spec.model == "default":
        return None, None, []
    model = resolve_model(spec.model)
    if spec.engine != "llamacpp":
        return model, None, []
    try:
        return model, read_gguf(model), []
    except InputError as e:
        # Not fatal here: the engine is the judge of its own input, and the supervisor reports its verdict.
        return model, None, [f"model metadata unreadable ({e}); knobs not sized"]


def _size(spec: WorkerSpec, info: GgufInfo, facts: HostFacts, placement: Placement,
          headroom_pct: float) -> tuple[WorkerSpec, FitReport, list[str]]:
    report = plan_fit(info, device_memory(facts, fit_device(facts, placement)), headroom_pct=headroom_pct,
                      ctx=spec.ctx, parallel=spec.parallel, cache_type_k=spec.cache_type_k or "f16",
                      cache_type_v=spec.cache_type_v or "f16")
    notes = list(report.notes)
    rec = report.recommended
    if spec.ctx is None and rec is not None:
        update: dict[str, int] = {"ctx": rec.ctx_total}
        if spec.parallel is None:
            update["parallel"] = rec.parallel
        spec = spec.model_copy(update=update)
        notes.append(f"ctx {rec.ctx_total} ({rec.ctx_per_slot} per slot) x parallel {rec.parallel} from the fit "
                     f"advisor ({report.device.name}: {report.device.free_bytes} bytes free)")
    return spec, report, notes


def prepare_worker(spec: WorkerSpec, facts: HostFacts, *, paths: HostPaths | None = None,
                   headroom_pct: float = 10.0, prefer_binding: BindPreference = "auto",
                   allow_remote: bool = False, run_as: RunAs | None = None) -> PreparedWorker:
    check_host(spec, allow_remote)
    paths = paths or HostPaths.live()
    engine = engine_for(spec, prefer_binding, run_as)
    model, info, notes = _model(spec)
    mlock = mlock_problem(spec, facts) if spec.engine == "llamacpp" else None
    if mlock:  # `plan` shows the same line: the weights load unlocked rather than the engine failing to start
        spec = spec.model_copy(update={"weights": WeightsSpec(backing=spec.weights.backing, mlock=False)})
        notes.append(mlock)
    if model is not None:
        check_readable(model, run_as)
    if spec.engine == "torch" and spec.weights.backing == "anon" and facts.thp.enabled not in ("madvise", "always"):
        notes.append(f"weights.backing anon: THP is {facts.thp.enabled or 'not available'} here, so the weights "
                     "cannot be in huge pages (thp.enabled madvise or always)")
    placement = plan_placement(facts, spec, model, paths=paths, model_bytes=info.weight_bytes if info else None)
    report: FitReport | None = None
    if info is not None:
        spec, report, fit_notes = _size(spec, info, facts, placement, headroom_pct)
        notes += fit_notes
    return PreparedWorker(spec=spec, engine=engine, facts=facts, paths=paths, model=model, info=info,
                          placement=placement, fit=report, headroom_pct=headroom_pct, notes=notes,
                          allow_remote=allow_remote, run_as=run_as)
