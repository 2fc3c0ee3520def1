"""Shared test suites that every store implementation must pass."""
