"""The diagnostics job kind: a cooperative sleep used to exercise the platform end to end."""
