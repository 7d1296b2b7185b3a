"""One router per resource; agent.api.app assembles them under /v1 behind the token dependency."""
