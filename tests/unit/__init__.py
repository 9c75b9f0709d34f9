"""Tests that need nothing beyond the Python process: parsers, verifiers, policy, CLI, broker."""
