"""The hosttune daemon: start sequence, scheduler jobs, sd_notify and signals (runner), host tuning with its
mutation lock (tuning_service), the worker, gateway, telemetry and controller (worker_stack), the facade the API
routes call (services), and the uvicorn server thread (http)."""
