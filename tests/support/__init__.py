"""Helpers for tests: real sockets and processes, no mocks."""
