"""Kith test-suite."""
