"""Configuration: one Settings class (prefix CONVEYOR_), queues, routes, limits, beat."""

from config.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
