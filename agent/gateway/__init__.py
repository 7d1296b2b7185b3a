"""OpenAI-compatible gateway in front of the worker: per-request TTFT/ITL/tokens, an admission limit the
controller can move at run time, and requests held (not failed) while the worker restarts."""
