"""The NVML simulator: a fake libnvidia-ml at the C-function level under the real pynvml binding (see library.py).

description.py  return codes, ctypes helpers, one simulated GPU, the JSON description loader
core.py         state, the function lookup, the checks every call makes, system calls, handles and identity
reads.py        the getters
health.py       ECC counters and the Xid event API (event sets, registration, non-blocking wait)
library.py      the setters, and install()/uninstall() into pynvml
"""
