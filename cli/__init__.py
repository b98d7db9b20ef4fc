"""Conveyor: cli package."""
