"""Access: scoped API keys, members of several organisations and their roles, the audit log."""
