"""Conveyor: tasks package."""
