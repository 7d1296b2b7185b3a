"""Live telemetry: samplers (host, worker, gateway, GPU) -> ring buffer (1 Hz) -> Prometheus exposition."""
