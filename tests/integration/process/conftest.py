"""Fixtures the admin API's tests share (test_admin_api.py, test_tunnels_cli.py,
test_admin_workers.py): the token file and a proxy serving the admin API."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ProxyFactory
from tests.integration.process.test_admin_api import TOKEN, admin_config
from tests.support import OriginServer, ProxyProcess


@pytest.fixture()
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin.token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture()
def proxy(make_proxy: ProxyFactory, origin: OriginServer, token_file: Path) -> ProxyProcess:
    return make_proxy(admin_config(origin.port, token_file))
