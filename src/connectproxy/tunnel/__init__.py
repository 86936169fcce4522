"""The tunnel: bytes copied both ways (splice(2) on Linux) after the 200."""
