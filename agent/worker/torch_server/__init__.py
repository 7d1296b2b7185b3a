"""The PyTorch worker (`engine: torch`): an OpenAI-compatible server with continuous batching whose max batch and
KV-cache budget change live through POST /control. Run it as `python -m agent.worker.torch_server --help`.

Importing this package needs the torch extra (torch, transformers, accelerate, gguf); agent.worker.torch_control
and agent.worker.torch_engine do not.
"""
