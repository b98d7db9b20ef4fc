"""Conveyor: store package."""
