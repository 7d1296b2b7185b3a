"""bench/os_effects.py's parts that need no engine: the catalogue of OS changes (which arms, which llama-server
flags, what this host cannot compare), the report on recorded rounds (medians, paired B/A intervals), and the host
values an arm sets and puts back, on a fixture host tree."""

from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path

import pytest

from agent.bench import os_arms
from agent.bench.os_arms import (
    POOL_FILE,
    THP_FILE,
    Arm,
    FoundHost,
    arm_host,
    catalogue,
    keep_found,
    mlock_problem,
    pool_grown,
    readahead_file,
    restore_found,
    run_dir,
)
from agent.bench.os_report import build_report, change_ratios, medians, print_report
from agent.errors import HostError, InputError
from agent.fsio import read_bracketed, read_int
from agent.hostfs import HostPaths

FOUND = FoundHost(thp="madvise", pool_pages=0, disk="nvme0n1", readahead_kb=8192)


def test_catalogue_pairs_each_change_with_the_host_as_found() -> None:
    arms, changes, skipped = catalogue(FOUND, None, hugetlbfs=True, mlock_why_not=None)
    assert {(c.a, c.b) for c in changes.values()} == {
        ("found", "hugetlbfs"), ("found", "anon"), ("found", "thp-never"), ("found", "thp-always"),
        ("anon", "anon-thp-never"), ("anon", "anon-thp-always"), ("found", "mlock"), ("found", "readahead")}
    assert "thp-madvise" in skipped and "anon-thp-madvise" in skipped  # the mode found is arm A itself
    # B differs from A in one thing only, and the flags are those the worker gets for the same weights spec
    assert arms["found"].server_args() == [] and arms["hugetlbfs"].server_args() == []
    assert arms["anon"].server_args() == ["--load-mode", "none"]
    assert arms["mlock"].server_args() == ["--load-mode", "mmap+mlock"]
    assert arms["anon-thp-always"] == Arm("anon-thp-always", "anon", thp="always")
    assert arms["readahead"].readahead_kb == 128 and arms["readahead"].thp is None


def test_catalogue_says_what_this_host_cannot_compare() -> None:
    found = FoundHost(thp="always", pool_pages=None, disk=None, readahead_kb=None)
    _, changes, skipped = catalogue(found, None, hugetlbfs=True, mlock_why_not="limit too low")
    assert set(skipped) == {"hugetlbfs", "thp-always", "anon-thp-always", "mlock", "readahead"}
    assert "no block device" in skipped["readahead"] and skipped["mlock"] == "limit too low"
    assert "thp-never" in changes and "thp-madvise" in changes
    small = FoundHost(thp="madvise", pool_pages=4, disk="vda", readahead_kb=128)
    arms, _, _ = catalogue(small, None, hugetlbfs=True, mlock_why_not=None)
    assert arms["readahead"].readahead_kb == 8192  # 128 found: B is the other end
    _, changes, skipped = catalogue(small, 128, hugetlbfs=True, mlock_why_not=None)
    assert "readahead" not in changes and "already 128" in skipped["readahead"]
    with pytest.raises(InputError, match="--readahead-kb"):
        catalogue(small, 1 << 30, hugetlbfs=True, mlock_why_not=None)


def test_mlock_needs_the_limit_unless_root() -> None:
    assert mlock_problem(100 << 20, 64 << 10, is_root=True) is None
    assert mlock_problem(100 << 20, None, is_root=False) is None
    assert "RLIMIT_MEMLOCK (0 MiB)" in (mlock_problem(100 << 20, 64 << 10, is_root=False) or "")


def _rounds(seed: int = 7) -> list[dict[str, float | int | str]]:
    """Five rounds of two arms as the script records them: a load that drifts over the run moves both arms of a
    round; B decodes ~12% faster, prefills the same (noise around equal), loads exactly the same."""
    rng = random.Random(seed)
    rows: list[dict[str, float | int | str]] = []
    for r in range(5):
        drift = 1.0 - 0.08 * r
        for arm, gain in (("found", 1.0), ("hugetlbfs", 1.12)):
            rows.append({"round": r, "arm": arm, "load_cold_s": 0.5 + 0.02 * r, "load_warm_s": 0.3 / drift,
                         "prefill_tok_s": 170 * drift * rng.uniform(0.99, 1.01),
                         "decode_tok_s": 65 * drift * gain * rng.uniform(0.99, 1.01),
                         "rss_mib": 191.0 if arm == "found" else 99.0,
                         "hugetlb_mib": 0.0 if arm == "found" else 94.0, "anon_huge_mib": 0.0, "locked_mib": 0.0})
    return rows


def test_report_gives_medians_and_paired_intervals_per_figure() -> None:
    rows = _rounds()
    report = build_report(rows, {"hugetlbfs": ("found", "hugetlbfs")}, resamples=2000, seed=3)
    decode = [float(r["decode_tok_s"]) for r in rows if r["arm"] == "found"]
    assert report["medians"]["found"]["decode_tok_s"] == pytest.approx(sorted(decode)[2])
    assert report["medians"]["hugetlbfs"]["hugetlb_mib"] == 94.0
    ratios = report["changes"]["hugetlbfs"]["ratios"]
    assert set(ratios) == {"load_cold_s", "load_warm_s", "prefill_tok_s", "decode_tok_s", "rss_mib"}
    dec = ratios["decode_tok_s"]
    b = [float(r["decode_tok_s"]) for r in rows if r["arm"] == "hugetlbfs"]
    assert dec["paired"] and dec["ratio"] == pytest.approx(sum(b) / sum(decode))
    assert 1.0 < dec["low"] < dec["ratio"] < dec["high"]  # the drift cancels within pairs: 1 is excluded
    pre = ratios["prefill_tok_s"]
    assert pre["low"] < 1.0 < pre["high"]
    assert ratios["rss_mib"]["ratio"] == pytest.approx(99.0 / 191.0)
    out = io.StringIO()
    print_report(report, out)
    text = out.getvalue()
    assert text.splitlines()[2].startswith("found ") and "94.0" in text.splitlines()[3]  # the medians table
    line = next(ln for ln in text.splitlines() if "found -> hugetlbfs" in ln)
    assert line.startswith("hugetlbfs ") and line.count("*") == 2  # decode and RSS exclude 1; load, prefill do not
    assert ratios["load_cold_s"]["low"] == ratios["load_cold_s"]["high"] == pytest.approx(1.0)
    json.dumps(report)  # the --json / --out report is plain JSON


def test_one_round_gives_ratios_without_intervals() -> None:
    rows = [r for r in _rounds() if r["round"] == 0]
    ratio = change_ratios(rows, "found", "hugetlbfs", resamples=2000, seed=1)["decode_tok_s"]
    assert ratio["ratio"] is not None and ratio["low"] is None and "fewer than" in ratio["note"]
    assert medians(rows, ["found"])["found"]["hugetlb_mib"] == 0.0
    assert medians(rows, ["found"])["found"]["file_pmd_mib"] is None  # recorded before the figure existed


def test_arms_that_ran_different_rounds_are_not_paired() -> None:
    rows = [r for r in _rounds() if not (r["arm"] == "hugetlbfs" and r["round"] == 2)]
    with pytest.raises(InputError, match="cannot be paired"):
        build_report(rows, {"hugetlbfs": ("found", "hugetlbfs")}, resamples=2000)


def test_arm_values_are_put_back_even_when_the_arm_fails(host: HostPaths) -> None:
    ra = readahead_file(host, "nvme0n1")
    found = FoundHost(thp="madvise", pool_pages=read_int(host.sys(POOL_FILE)), disk="nvme0n1",
                      readahead_kb=read_int(ra))
    with arm_host(Arm("x", "page_cache", thp="always"), found, host):
        assert read_bracketed(host.sys(THP_FILE))[0] == "always"
    assert found.readahead_kb not in (None, 4096)
    with pytest.raises(RuntimeError), arm_host(Arm("y", "page_cache", readahead_kb=4096), found, host):
        assert read_int(ra) == 4096
        raise RuntimeError("llama-server failed")
    assert read_int(ra) == found.readahead_kb and read_bracketed(host.sys(THP_FILE))[0] == "madvise"
    assert found.pool_pages is not None
    with pool_grown(host, 47, found.pool_pages):
        assert read_int(host.sys(POOL_FILE)) == found.pool_pages + 47
    assert read_int(host.sys(POOL_FILE)) == found.pool_pages


def _killed_run(host: HostPaths, tmp_path: Path) -> tuple[Path, Path]:
    """found.json as a run left it when killed mid-arm: THP and read_ahead_kb set, a private model copy."""
    where = run_dir(host)
    copy = tmp_path / "os-effects-abc_12"
    copy.mkdir()
    (copy / "m.gguf").write_bytes(b"GGUF")
    keep_found(FoundHost(thp="madvise", pool_pages=3, disk="nvme0n1", readahead_kb=8192), where, copy=copy)
    with pytest.raises(HostError, match="--restore"):
        keep_found(FOUND, where)  # a second run refuses to start over the record
    record = json.loads((where / "found.json").read_text())
    record["set"].update(thp="always", readahead_kb="128")   # marked before each write
    (where / "found.json").write_text(json.dumps(record))
    host.sys(THP_FILE).write_text("[always] madvise never\n")   # what the killed run had set
    readahead_file(host, "nvme0n1").write_text("128")
    host.sys(POOL_FILE).write_text("7")   # not set by the run: not its to put back
    return where, copy


def test_restore_puts_back_what_a_killed_run_left(host: HostPaths, tmp_path: Path) -> None:
    where, copy = _killed_run(host, tmp_path)
    done = restore_found(host, where)
    assert len(done) == 3 and not where.exists() and not copy.exists()
    assert read_bracketed(host.sys(THP_FILE))[0] == "madvise" and read_int(host.sys(POOL_FILE)) == 7
    assert read_int(readahead_file(host, "nvme0n1")) == 8192
    assert restore_found(host, where) == []


def test_restore_leaves_alone_a_value_someone_changed_since(host: HostPaths, tmp_path: Path) -> None:
    where, _ = _killed_run(host, tmp_path)
    host.sys(THP_FILE).write_text("always madvise [never]\n")   # e.g. a hosttune apply after the kill
    done = restore_found(host, where)
    assert read_bracketed(host.sys(THP_FILE))[0] == "never"
    assert any("left alone" in line and "'never'" in line for line in done)
    assert read_int(readahead_file(host, "nvme0n1")) == 8192


def test_restore_tries_every_target_before_it_fails(host: HostPaths, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    where, copy = _killed_run(host, tmp_path)
    (where / "journal.json").write_text("{}")
    monkeypatch.setattr(os_arms, "unstage_weights", lambda *_: ["umount: target is busy"])
    with pytest.raises(HostError, match="target is busy"):
        restore_found(host, where)
    assert read_bracketed(host.sys(THP_FILE))[0] == "madvise"
    assert read_int(readahead_file(host, "nvme0n1")) == 8192 and not copy.exists()
    assert (where / "found.json").exists()   # kept: another --restore retries the mount


def test_an_arm_leaves_alone_a_value_changed_while_it_ran(host: HostPaths) -> None:
    found = FoundHost(thp="madvise", pool_pages=read_int(host.sys(POOL_FILE)), disk=None, readahead_kb=None)
    keep_found(found, run_dir(host))
    with pytest.raises(HostError, match="left alone"), arm_host(Arm("x", "page_cache", thp="always"), found, host):
        assert json.loads((run_dir(host) / "found.json").read_text())["set"]["thp"] == "always"
        host.sys(THP_FILE).write_text("always madvise [never]\n")   # another tool, mid-arm
    assert read_bracketed(host.sys(THP_FILE))[0] == "never"
    assert json.loads((run_dir(host) / "found.json").read_text())["set"]["thp"] is None


@pytest.mark.parametrize("bad", [{"disk": "../../kernel"}, {"thp": "sometimes"}, {"readahead_kb": -1},
                                 {"pool_pages": "52"}, {"extra": 1}, {"set": {"thp": "x"}},
                                 {"set": {"thp": None, "pool_pages": "1e9", "readahead_kb": None}},
                                 {"copy": "/etc"}, {"copy": "/var/tmp/os-effects-x/../../etc"}])
def test_a_tampered_record_is_refused_before_anything_is_written(host: HostPaths, bad: dict[str, object]) -> None:
    where = run_dir(host)
    keep_found(FOUND, where)
    record = json.loads((where / "found.json").read_text())
    for key, value in bad.items():
        if key in ("set", "copy"):
            record[key] = value
        else:
            record["found"][key] = value
    (where / "found.json").write_text(json.dumps(record))
    before = host.sys(THP_FILE).read_text()
    with pytest.raises(InputError):
        restore_found(host, where)
    assert host.sys(THP_FILE).read_text() == before


def test_readahead_names_a_device_mapper_or_md_queue(host: HostPaths) -> None:
    assert readahead_file(host, "dm-0") == host.sys("block", "dm-0", "queue", "read_ahead_kb")
    assert readahead_file(host, "md127").parent.parent.name == "md127"
    for bad in ("dm-", "../sda", "dm-0/../x"):
        with pytest.raises(InputError):
            readahead_file(host, bad)


def test_the_script_refuses_a_host_hosttune_has_tuned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from agent.tuning.journal import Applied
    from agent.tuning.state import StateDir

    spec = importlib.util.spec_from_file_location("os_effects_script", Path(__file__).parents[2] / "bench" /
                                                  "os_effects.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)   # its dataclasses look their module up there
    spec.loader.exec_module(script)
    state = StateDir(tmp_path / "state").ensure()
    journal = state.journal()
    journal.data.applied = Applied(policy="llm-inference", txn="t1")
    journal.save()
    monkeypatch.setattr(script, "DEFAULT_STATE_DIR", state.path)
    monkeypatch.setattr(script.os, "geteuid", lambda: 0)
    monkeypatch.setattr(script, "resolve_model", lambda _: pytest.fail("went on past the refusal"))
    with pytest.raises(HostError, match="applied policy 'llm-inference'"):
        script.main(["--changes", "thp-always"])
