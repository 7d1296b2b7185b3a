"""`hosttune bench`: a load generator for OpenAI-compatible servers (closed and open loop, realistic request
mixes) and the engine-knob sweep the controller is measured against."""
