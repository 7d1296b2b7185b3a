"""Every test under tests/process carries the `process` marker, so `-m "not process"` leaves the tier out."""

from __future__ import annotations

import pytest


def test_tests_here_carry_the_process_marker(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("process") is not None
