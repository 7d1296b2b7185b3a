"""Everything NVIDIA GPU in one package.

nvml.py       the funnel: the only module that calls the pynvml binding (errors, dry-run, the mutation guard)
device.py     one GPU read (and set) through the funnel: what inspect, the GPU tuner and telemetry derive from
ledger.py     the GPU tuner's record of the clock locks it set (NVML cannot read a lock back)
check.py      the read-only GPU check behind scripts/gpu-check.sh (nvidia-smi through `sh`)
simulator/    a stand-in for libnvidia-ml at the C-function level, for tests and --nvml-sim

An NVML session (nvml.Nvml) is handed to whoever needs it; there is no process-wide session.
"""
