"""The decision for one request, as pure functions over the config (docs/configuration.md)."""
