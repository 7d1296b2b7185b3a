"""The adaptive controller: the gateway's admission limit (fast lever) and the engine's knobs (slow lever), driven
by live measurements, with every decision logged and kept only if it paid. See docs/controller.md."""
