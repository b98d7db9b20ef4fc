"""The job domain's rules: creating a job (the one path), its view, its events, and the
crash-safety sweeps (leases and queued jobs without a message). The rows live in ``store``."""
