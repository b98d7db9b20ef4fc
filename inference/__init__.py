"""Conveyor: inference package."""
