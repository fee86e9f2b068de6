"""Wrenn's control plane: the Falcon (ASGI) REST API, E2B-compatible sandbox routes, the sandbox traffic proxy."""
