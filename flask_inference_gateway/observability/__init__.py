"""Metrics, request records and logs."""
