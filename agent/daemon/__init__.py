"""The hosttune daemon: start sequence, scheduler jobs, sd_notify and signals (runner), the adapter to the other
parts (services), and the uvicorn server thread (http)."""
