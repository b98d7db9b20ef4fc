"""Model deployments: desired state in the store, replicas run by a backend."""
