"""What a run records besides its figures: raw tool output, notes, policy checks, noise.

A figure alone cannot say whether it measured the proxy; these records can (a saturated client, a
busy machine, a proxy that answered a denied CONNECT), and they go into the result file with it.
"""

from __future__ import annotations

import statistics

from .settings import JsonDict


class Journal:
    """The records of one run; `warn` also prints, so a long run shows trouble as it happens."""

    def __init__(self) -> None:
        self.raw: list[JsonDict] = []
        self.warnings: list[str] = []
        self.policy_check: dict[str, JsonDict] = {}
        self.access_log_lines: dict[str, list[int]] = {}
        self.targets: dict[str, JsonDict] = {}
        self.noise: list[float] = []  # other processes' CPU % during each measurement

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        print(f"  note: {text}", flush=True)

    def check_client(self, name: str, step: str, cpu: JsonDict) -> None:
        """Say when a figure may not measure the proxy: a saturated client, or a noisy machine."""
        busy = cpu.get("client_cpu_busy_pct")
        if name != "direct" and busy is not None and busy > 95:
            self.warn(
                f"{name} {step}: the client CPU was {busy:.0f}% busy, so this figure "
                "is a lower bound of what the proxy can do"
            )
        other = cpu.get("other_procs_cpu_pct")
        if other is not None:
            self.noise.append(other)

    def summarize_noise(self) -> None:
        """One note for the whole run: on a shared machine a note per measurement is clutter."""
        noisy = [x for x in self.noise if x > 10]
        if noisy:
            self.warn(
                f"processes outside the benchmark used over 10% of a core during {len(noisy)} of "
                f"{len(self.noise)} measurements (up to {max(noisy):.0f}%, median "
                f"{statistics.median(self.noise):.0f}%): the machine is shared, so compare the "
                "proxies within this run (see the 'other processes CPU %' rows)"
            )
