"""Conveyor: api/routers package."""
