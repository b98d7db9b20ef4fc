"""Deployment backends: one interface (base), local processes and Kubernetes."""
