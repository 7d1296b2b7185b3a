"""GPU descriptions for the C-level NVML simulator (agent/gpu/simulator/), shared by the GPU tests.

The numbers are the published shape of the parts: H200 SXM 141 GB (SM up to 1980 MHz, HBM3e 3201 MHz, 700 W)
and H100 SXM5 80 GB (SM up to 1980 MHz, HBM3 2619 MHz, 700 W, power limit down to 200 W).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SERVER_8GPU = REPO / "tests/fixtures/hosts/server-2s-8gpu/nvml.json"

H200_GRAPHICS = list(range(1980, 344, -15))   # 1980, 1965, ..., 345: 110 clocks
H200: dict[str, Any] = {
    "name": "NVIDIA H200",
    "uuid": "GPU-5a1c0d5e-0000-4000-8000-000000000200",
    "pci_bus_id": "00000000:18:00.0",
    "memory_total_bytes": 150754820096,
    "memory_used_bytes": 1073741824,
    "clocks": {"sm_mhz": 345, "mem_mhz": 3201},
    "max_clocks": {"sm_mhz": 1980, "mem_mhz": 3201},
    "base_clocks": {"sm_mhz": 1590},
    "supported_memory_clocks_mhz": [3201],
    "supported_graphics_clocks_mhz": {"3201": H200_GRAPHICS},
    "power": {"limit_mw": 700000, "default_limit_mw": 700000, "min_limit_mw": 200000, "max_limit_mw": 700000,
              "usage_mw": 115000},
    "persistence_mode": 0,
    "cuda_compute_capability": [9, 0],
    "temperature_c": 33,
    "utilization": {"gpu": 87, "memory": 41},
    "clocks_event_reasons": 4,
}


def h100(index: int, bus: str) -> dict[str, Any]:
    return {
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": f"GPU-00000000-0000-4000-8000-0000000001{index:02d}",
        "pci_bus_id": f"00000000:{bus}:00.0",
        "memory_total_bytes": 85520809984,
        "clocks": {"sm_mhz": 1755, "mem_mhz": 2619},
        "max_clocks": {"sm_mhz": 1980, "mem_mhz": 2619},
        "supported_memory_clocks_mhz": [2619],
        "supported_graphics_clocks_mhz": {"2619": {"from": 345, "to": 1980, "step": 15}},
        "power": {"limit_mw": 700000, "default_limit_mw": 700000, "min_limit_mw": 200000, "max_limit_mw": 700000,
                  "usage_mw": 350000},
        "persistence_mode": 1,
    }


def description(*gpus: dict[str, Any], **top: Any) -> dict[str, Any]:
    """A whole simulator description (deep-copied, so tests may edit it freely)."""
    desc: dict[str, Any] = {"driver_version": "570.124.06", "nvml_version": "12.570.124.06",
                            "cuda_driver_version": 12080, "gpus": [copy.deepcopy(g) for g in gpus]}
    desc.update(top)
    return desc
