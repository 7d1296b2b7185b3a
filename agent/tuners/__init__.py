"""OS tuners, one module each, registering themselves (see registry.py); the contract is in base.py."""
