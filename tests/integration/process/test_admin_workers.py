"""The admin API (SPEC section 7.1) of a real `run --workers 2` proxy: the supervisor's metrics
listener lists the tunnels of both workers with live byte counts, closes by id and by client in
whichever worker holds them, merges the refusals, sums the status page, serves
`connectproxy tunnels`, and leaves out a worker that does not answer (stopped with SIGSTOP)
without hanging. `reload.close_denied` ends refused tunnels in every worker.

Every process is started by a fixture and signalled by its own PID.
"""

from __future__ import annotations

import copy
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from connectproxy.process.adminfanout import ASK_TIMEOUT, ID_SPACE, WORKERS_HEADER
from tests.conftest import ProxyFactory
from tests.integration.process.test_admin_api import (
    RELOADS,
    SENSOR,
    TOKEN,
    UPDATES,
    admin_config,
    api,
    ended,
    listed,
    tunnel,
)
from tests.integration.process.test_operations import children_of
from tests.integration.process.test_status_page import StatusPage, tunnel_figures
from tests.support import (
    OriginServer,
    ProxyProcess,
    Streamer,
    echo_exchange,
    finish,
    request,
    wait_for_metric,
    wait_until,
)

WORKERS = ["--workers", "2"]


def worker_of(row: dict[str, Any]) -> int:
    """Which started worker holds a listed tunnel: the base its ids count from."""
    return int(row["id"]) // ID_SPACE


def spread(proxy: ProxyProcess, target: str, source: str = "127.0.0.1") -> list[socket.socket]:
    """Tunnels opened until both workers hold some (the kernel spreads SO_REUSEPORT
    connections by a hash of the addresses); at most 40."""
    held: list[socket.socket] = []
    while len(held) < 40:
        held.append(tunnel(proxy.port, target, source=source))
        if len(held) >= 2 and len({worker_of(row) for row in listed(proxy)}) == 2:
            return held
    raise AssertionError("40 tunnels all went to one worker")


def readable(socks: list[socket.socket]) -> list[socket.socket]:
    """The tunnels with something to read: quiet ones only when the proxy has closed them."""
    return list(select.select(socks, [], [], 0)[0])


def page(proxy: ProxyProcess) -> StatusPage:
    status, response, body = api(proxy, "GET", "/status")
    assert status == 200
    assert response.getheader(WORKERS_HEADER) == "2/2"
    assert isinstance(body, bytes)
    return StatusPage(body.decode())


def private_dir(proxy: ProxyProcess) -> Path:
    """The supervisor's private directory, from a worker's environment."""
    assert proxy.proc is not None
    environ = Path(f"/proc/{children_of(proxy.proc.pid)[0]}/environ").read_bytes()
    found = [v for v in environ.split(b"\0") if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(found[0].split(b"=", 1)[1].decode())


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connectproxy", "tunnels", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_supervisor_lists_closes_and_sums_every_workers_tunnels(
    make_proxy: ProxyFactory, origin: OriginServer, token_file: Path
) -> None:
    proxy = make_proxy(admin_config(origin.port, token_file), extra_args=WORKERS)
    assert proxy.proc is not None and len(children_of(proxy.proc.pid)) == 2
    for method, path in (
        ("GET", "/api/tunnels"),
        ("GET", "/api/denials"),
        ("GET", "/status"),
        ("POST", "/api/tunnels/close"),
    ):
        status, response, _ = api(proxy, method, path, {"client": "local"}, authorization=None)
        assert status == 401, path
        assert response.getheader("WWW-Authenticate", "").startswith("Basic realm=")
    wrong = api(proxy, "GET", "/api/tunnels", authorization=f"Bearer {TOKEN[:-1]}x")
    assert wrong[0] == 401

    target = f"{SENSOR}:{origin.port}"
    held = spread(proxy, target)
    plc = [tunnel(proxy.port, f"{UPDATES}:{origin.port}", source="127.0.0.2") for _ in range(3)]
    status, response, rows = api(proxy, "GET", "/api/tunnels")
    assert status == 200 and response.getheader(WORKERS_HEADER) == "2/2"
    assert len(rows) == len(held) + len(plc)
    assert len({row["id"] for row in rows}) == len(rows)  # unique across workers
    assert {worker_of(row) for row in rows} == {1, 2}

    # Live byte counts, from whichever worker holds the busy tunnel.
    busy = Streamer(tunnel(proxy.port, target))
    busy.wait_rounds(3)

    def busy_row() -> dict[str, Any]:
        return max(listed(proxy), key=lambda row: int(row["bytes_client_to_server"]))

    before = busy_row()["bytes_client_to_server"]
    busy.wait_rounds(5)
    wait_until(lambda: busy_row()["bytes_client_to_server"] > before + 4 * 16384, what="live bytes")
    busy.stop()

    # Close by id: one quiet tunnel in each worker, each id sent once to the supervisor.
    busy_id = busy_row()["id"]
    quiet = [row for row in listed(proxy) if row["client"] == "local" and row["id"] != busy_id]
    one_each = [min(row["id"] for row in quiet if worker_of(row) == w) for w in (1, 2)]
    left = list(held)
    for tunnel_id in one_each:
        status, response, answer = api(proxy, "POST", "/api/tunnels/close", {"id": tunnel_id})
        assert (status, answer) == (200, {"closed": 1})
        assert response.getheader(WORKERS_HEADER) == "2/2"
        wait_until(lambda: len(readable(left)) == 1, what="the closed tunnel to end")
        gone = readable(left)[0]
        assert ended(gone)
        left.remove(gone)
    for sock in left:
        echo_exchange(sock, b"still open")
    left.append(busy.sock)

    # A filter a worker refuses comes back as its 400.
    status, _, answer = api(proxy, "POST", "/api/tunnels/close", {"clinet": "plc"})
    assert status == 400 and "unknown filter key" in answer["error"]

    # Refusals from both workers, merged newest first.
    for n in range(12):
        assert request(proxy.port, f"refused-{n}.example.org:{origin.port}")[0] == 403
    wait_until(lambda: len(api(proxy, "GET", "/api/denials")[2]) == 12, what="12 refusals")
    status, response, denials = api(proxy, "GET", "/api/denials")
    assert response.getheader(WORKERS_HEADER) == "2/2"
    stamps = [d["ts"] for d in denials]
    assert stamps == sorted(stamps, reverse=True)
    assert {d["target"] for d in denials} == {
        f"refused-{n}.example.org:{origin.port}" for n in range(12)
    }

    # The status page sums both workers.
    summed = page(proxy)
    figures = tunnel_figures(summed)
    assert figures["local"][0] == len(left) and figures["plc"][0] == len(plc)
    assert figures["local"][1] > 4 * 16384  # the busy tunnel's bytes, from its worker
    refusals = summed.rows("refusals")
    assert sum(int(row[3].text.replace(",", "")) for row in refusals.values()) == 12
    assert "2 of 2 answered" in "".join(summed.text)
    head = api(proxy, "HEAD", "/status")
    assert head[0] == 200 and head[1].getheader(WORKERS_HEADER) == "2/2"
    assert api(proxy, "HEAD", "/api/tunnels")[0] == 200

    # `connectproxy tunnels` against the supervisor, unchanged.
    config = str(proxy.config_path)
    table = run_cli("--config", config)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[-1] == f"{len(left) + len(plc)} open tunnels"
    by_cli = run_cli("--config", config, "--close", "client=plc")
    assert (by_cli.returncode, by_cli.stdout) == (0, f"closed {len(plc)} tunnels\n"), by_cli
    for sock in plc:
        assert ended(sock)
    status, _, answer = api(proxy, "POST", "/api/tunnels/close", {"client": "local"})
    assert (status, answer) == (200, {"closed": len(left)})
    for sock in left:
        assert ended(sock)
    assert listed(proxy) == []
    assert TOKEN not in proxy.stderr()


def test_a_worker_that_does_not_answer_is_left_out_in_time(
    make_proxy: ProxyFactory, origin: OriginServer, token_file: Path
) -> None:
    proxy = make_proxy(admin_config(origin.port, token_file), extra_args=WORKERS)
    assert proxy.proc is not None
    held = spread(proxy, f"{SENSOR}:{origin.port}")
    rows = listed(proxy)
    stopped = children_of(proxy.proc.pid)[0]
    os.kill(stopped, signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, response, partial = api(proxy, "GET", "/api/tunnels")
        took = time.monotonic() - started
        assert status == 200 and response.getheader(WORKERS_HEADER) == "1/2"
        assert 0 < len(partial) < len(rows)
        assert took < ASK_TIMEOUT + 2
        status, response, body = api(proxy, "GET", "/status")
        assert status == 200 and response.getheader(WORKERS_HEADER) == "1/2"
        assert "1 of 2 answered" in "".join(StatusPage(body.decode()).text)
        status, response, answer = api(proxy, "POST", "/api/tunnels/close", {"client": "nobody"})
        assert (status, answer) == (200, {"closed": 0})
        assert response.getheader(WORKERS_HEADER) == "1/2"
    finally:
        os.kill(stopped, signal.SIGCONT)
    assert len(listed(proxy)) == len(rows)
    for sock in held:
        finish(sock)


def test_a_replaced_worker_answers_under_a_new_number(
    make_proxy: ProxyFactory, origin: OriginServer, token_file: Path
) -> None:
    proxy = make_proxy(admin_config(origin.port, token_file), extra_args=WORKERS)
    assert proxy.proc is not None
    held = spread(proxy, f"{SENSOR}:{origin.port}")
    private = private_dir(proxy)
    supervisor = proxy.proc.pid
    victim = children_of(supervisor)[0]
    os.kill(victim, signal.SIGKILL)

    def answered() -> bool:
        status, response, _ = api(proxy, "GET", "/api/tunnels")
        return status == 200 and response.getheader(WORKERS_HEADER) == "2/2"

    wait_until(lambda: victim not in children_of(supervisor), what="the killed worker")
    wait_until(answered, 15.0, "both workers answering again")
    sockets = sorted(p.name for p in private.iterdir() if p.name.endswith(".sock"))
    assert len(sockets) == 2 and "admin-3.sock" in sockets  # the killed one's is gone
    survivors = listed(proxy)
    assert 0 < len(survivors) < len(held)
    fresh = spread(proxy, f"{SENSOR}:{origin.port}")
    assert 3 in {worker_of(row) for row in listed(proxy)}
    for sock in fresh:
        finish(sock)
    for sock in held:
        sock.close()


def test_close_denied_ends_refused_tunnels_in_every_worker(
    make_proxy: ProxyFactory, origin: OriginServer, token_file: Path
) -> None:
    config = admin_config(origin.port, token_file, reload={"close_denied": True})
    config["policies"]["updates"]["domains"] = [UPDATES, SENSOR]
    proxy = make_proxy(config, extra_args=WORKERS)
    removed = spread(proxy, f"{SENSOR}:{origin.port}", source="127.0.0.2")
    kept = [tunnel(proxy.port, f"{UPDATES}:{origin.port}", source="127.0.0.2") for _ in range(4)]
    kept += [tunnel(proxy.port, f"{SENSOR}:{origin.port}") for _ in range(4)]
    narrowed = copy.deepcopy(proxy.config)
    narrowed["policies"]["updates"]["domains"] = [UPDATES]
    proxy.write_config(narrowed)
    proxy.signal(signal.SIGHUP)
    wait_for_metric(proxy, RELOADS, 1, result="success")
    for sock in removed:
        assert ended(sock)
    for sock in kept:
        echo_exchange(sock, b"kept")
    assert len(listed(proxy)) == len(kept)
    for sock in kept:
        finish(sock)


def test_without_a_token_file_the_supervisor_serves_no_admin_path(
    make_proxy: ProxyFactory, origin: OriginServer, token_file: Path
) -> None:
    config = admin_config(origin.port, token_file)
    del config["admin"]
    proxy = make_proxy(config, extra_args=WORKERS)
    for path in ("/api/tunnels", "/api/denials", "/status"):
        assert api(proxy, "GET", path)[0] == 404
    assert api(proxy, "POST", "/api/tunnels/close", {"client": "local"})[0] == 404
    assert api(proxy, "GET", "/healthz", authorization=None)[0] == 200
    # The workers' sockets are in a directory only the proxy's user can enter.
    private = private_dir(proxy)
    assert private.stat().st_mode & 0o777 == 0o700
    sockets = sorted(p.name for p in private.iterdir() if p.name.endswith(".sock"))
    assert sockets == ["admin-1.sock", "admin-2.sock"]
