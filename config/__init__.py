"""Conveyor: config package."""
