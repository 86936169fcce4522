"""connectproxy: a forwarding HTTP CONNECT proxy that lets OT sensors reach allowlisted cloud
endpoints and nothing else."""

__version__ = "0.1.0"


def compiled() -> bool:
    """Whether the connection path runs as the extension modules setup.py compiles, or as plain
    Python (CONNECTPROXY_PURE_PYTHON=1 at install). `--version` and the "started" log line say
    which, because the two differ in speed and nothing else."""
    from importlib.util import find_spec

    # Found, not imported: importing the server would import prometheus_client before
    # `--workers` has set up its multiprocess mode.
    spec = find_spec("connectproxy.server.server")
    return spec is not None and spec.origin is not None and not spec.origin.endswith(".py")
