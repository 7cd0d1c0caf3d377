"""Reporting layer: pure functions from run records to tables and plots."""
