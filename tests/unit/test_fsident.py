"""fs_identity always gives the thread its original filesystem identity back, also when the switch itself or
the block raises. A fake libc stands in for setfsuid/setfsgid (unit tier: no privileges needed)."""

from __future__ import annotations

import pytest

from agent.worker import fsident


class FakeLibc:
    """setfsuid/setfsgid of one thread: return the previous id, change it unless given the invalid id."""

    def __init__(self, fail_uid_switch: bool = False) -> None:
        self.ids = {"uid": 1000, "gid": 1000}
        self.fail_uid_switch = fail_uid_switch

    def _set(self, kind: str, value: int) -> int:
        before = self.ids[kind]
        if value != fsident._UNCHANGED:
            self.ids[kind] = value
        return before

    def setfsgid(self, gid: int) -> int:
        return self._set("gid", gid)

    def setfsuid(self, uid: int) -> int:
        if self.fail_uid_switch and uid not in (fsident._UNCHANGED, 1000):
            self.fail_uid_switch = False
            raise KeyboardInterrupt  # e.g. a signal arriving between the gid and the uid switch
        return self._set("uid", uid)


def test_an_exception_inside_the_block_restores_the_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLibc()
    monkeypatch.setattr(fsident, "_libc", fake)
    with pytest.raises(RuntimeError), fsident.fs_identity(65534, 65533):
        assert fake.ids == {"uid": 65534, "gid": 65533}
        raise RuntimeError("boom")
    assert fake.ids == {"uid": 1000, "gid": 1000}


def test_an_exception_during_the_switch_restores_the_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeLibc(fail_uid_switch=True)
    monkeypatch.setattr(fsident, "_libc", fake)
    with pytest.raises(KeyboardInterrupt), fsident.fs_identity(65534, 65533):
        pass  # not reached: the uid switch raised after the gid had changed
    assert fake.ids == {"uid": 1000, "gid": 1000}  # the gid switched first is back too
