"""connectproxy: a forwarding HTTP CONNECT proxy that lets OT sensors reach allowlisted cloud
endpoints and nothing else."""

__version__ = "0.1.0"
