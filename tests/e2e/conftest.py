"""The e2e tests run against the session stack of tests/stack.py (`stack`, `start_adapter`,
registered for the whole suite by tests/conftest.py); its names are re-exported here for
the tests that import them from this module."""

from tests.stack import ENGINE_PARAMETERS, Adapter, Stack, StartAdapter, free_port

__all__ = ["ENGINE_PARAMETERS", "Adapter", "Stack", "StartAdapter", "free_port"]
