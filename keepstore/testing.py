"""pytest plugin and test helpers for keepstore users: local stores, clusters, fault injection."""

from __future__ import annotations
