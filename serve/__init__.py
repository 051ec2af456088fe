"""Serving: vLLM with the tuned adapter(s), and the ME gateway in front of it."""
