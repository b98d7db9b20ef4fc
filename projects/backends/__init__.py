"""Project backends (local processes, Kubernetes)."""
