"""Conveyor: workers package."""
