"""Serving: listeners, limits, and one connection's flow from accept to the access-log line."""
