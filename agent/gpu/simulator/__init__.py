"""The NVML simulator: a fake libnvidia-ml at the C-function level under the real pynvml binding (see library.py).

description.py  return codes, ctypes helpers, one simulated GPU, the JSON description loader
core.py         state, the function lookup, the checks every call makes, system calls, handles and identity
reads.py        the getters
library.py      the setters, and install()/uninstall() into pynvml
"""
