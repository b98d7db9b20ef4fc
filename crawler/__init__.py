"""Conveyor: crawler package."""
