"""Metric primitives with no hosttune dependencies: the Prometheus text format (prom), rolling latency and rate
windows (window) and the sample ring buffer (ring). The gateway, the workers and the telemetry collector build on
them; they import nothing above agent.errors."""
