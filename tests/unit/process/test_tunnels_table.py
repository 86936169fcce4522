"""The table `connectproxy tunnels` prints: aligned, human figures, and nothing a client sent
can reach the terminal as a control character."""

from __future__ import annotations

from connectproxy.process.tunnels_cli import format_table

ROW = {
    "id": 12,
    "client": "plc-7",
    "user": None,
    "policy": "default",
    "client_addr": "10.1.2.3",
    "target": "sensor.example.com:443",
    "server_addr": "192.0.2.1:443",
    "upstream": None,
    "sni": "sensor.example.com",
    "started": "2026-01-01T00:00:00.250Z",
    "bytes_client_to_server": 1536,
    "bytes_server_to_client": 5 * 1024 * 1024,
    "idle_s": 75.2,
}


def test_table_has_a_header_a_row_per_tunnel_and_a_count() -> None:
    now = 1767225600.0 + 3725  # 1h02m05s after `started`
    lines = format_table([ROW, {**ROW, "id": 3, "user": "alice"}], now).splitlines()
    assert lines[0].split() == [
        "ID", "CLIENT", "USER", "POLICY", "FROM", "TARGET", "SNI", "UP", "DOWN", "AGE", "IDLE"
    ]  # fmt: skip
    assert lines[1].split() == [
        "12", "plc-7", "-", "default", "10.1.2.3", "sensor.example.com:443",
        "sensor.example.com", "1.5", "KiB", "5.0", "MiB", "1h02m", "1m15s",
    ]  # fmt: skip
    assert lines[2].split()[:3] == ["3", "plc-7", "alice"]
    assert lines[-1] == "2 open tunnels"
    assert format_table([], now).splitlines()[-1] == "0 open tunnels"


def test_control_characters_never_reach_the_terminal() -> None:
    hostile = {**ROW, "sni": "evil\x1b[2J\x07.example.com", "user": "a\nb"}
    text = format_table([hostile], 0.0)
    assert "\x1b" not in text and "\x07" not in text
    assert "evil?[2J?.example.com" in text
    assert len(text.splitlines()) == 3
