"""RAG endpoints (Syft Space's surface): datasets ingested as jobs on the ``ingest`` queue, model
providers, endpoints that answer questions from datasets with citations, and their policies."""
