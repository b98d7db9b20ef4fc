"""Inference domain: engines (vLLM, transformers, embeddings) behind one async interface,
OpenAI wire-format schemas, the worker runtime and Redis token relay, and a standalone
OpenAI-compatible model server (``python -m inference.server``)."""
