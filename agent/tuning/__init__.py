"""The tuning engine: plan, a crash-safe journaled transaction for apply, rollback, revert, verify, status.
Entry points are in agent.tuning.api; docs/tuning.md describes the design."""
