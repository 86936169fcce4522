#!/usr/bin/env python3
"""Benchmark connectproxy against Squid on loopback, side by side, in one run.

Why this shape: on a small shared machine the only fair comparison is one where both proxies get
the same core, the same client, the same origin and the same minute of machine noise. So the proxy
under test (with every process it forks) is pinned to one CPU, the C load generator and the C
origin to another, and each round runs every proxy in turn on a fresh process. Figures are medians
over rounds, and the ratio column is candidate / squid.

Scenarios (each on a fresh proxy process, after a warm-up that must succeed):
  rate        50 closed-loop clients: connect, CONNECT, 200, 64-byte echo, close -> tunnels/s;
              then one client at a time for the latency of CONNECT -> 200.
  throughput  bulk up and down through 1 and 8 tunnels -> GB/s and proxy CPU seconds per GB.
  idle        5,000 open idle tunnels -> proxy memory per tunnel; then every one must still echo.

Only the Python standard library is used, so any python3 >= 3.11 can run it. Every process it
starts it stops by PID; every wait is bounded. See bench/README.md for the figures' meaning; the
driver itself is the package bench/cpbench/, one job per module (its __init__ lists them).
"""

from __future__ import annotations

import sys

from cpbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
