"""The inference worker: spec, engines (llama.cpp, torch, command), placement and supervision."""
