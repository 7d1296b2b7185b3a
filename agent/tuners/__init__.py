"""OS tuners, one module each, registering themselves (registration.py; registry.py imports them all). The
contract they implement, agent.tunable.tuner.Tuner, sits below both this package and the tuning engine
(agent.tuning), which imports it."""
