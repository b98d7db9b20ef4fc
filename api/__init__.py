"""Conveyor: api package."""
