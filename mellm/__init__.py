"""MELLM: micro-expression understanding with multimodal LLMs."""
__version__ = "0.1.0"
