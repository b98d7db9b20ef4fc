"""Configuration: one Settings class (prefix CONVEYOR_), queues, routes, limits, beat."""

from config.settings import Settings, default, get_settings

__all__ = ["Settings", "default", "get_settings"]
