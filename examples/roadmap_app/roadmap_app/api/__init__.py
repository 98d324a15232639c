"""The HTTP API: routers under `api/routes`, dependencies in `api/deps`, bodies in `api/schemas`."""
