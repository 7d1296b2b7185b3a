"""The vocabulary the tuners (agent.tuners) and the tuning engine (agent.tuning) share, below both.

change.py  Change: one tunable in a plan (also the applied state in the journal); Action, Compare
formats.py how a host file shows a value (scalar, choice, text)
record.py  Record: a journaled original and how to put it back
writer.py  Writer: the host-write interface a tuner is handed (agent.tuning.writer.HostWriter implements it)
tuner.py   Tuner: the contract every tuner implements, with defaults for file-backed tunables

Nothing here imports agent.tuners or agent.tuning: the engine imports the tuners, the tuners import this.
"""
