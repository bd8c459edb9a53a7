"""Fixtures for the controller tests: databases (SQLite always, PostgreSQL when it answers),
an app over a fresh database (with credentials on; its client sends an API token), and fake
drones registered straight into the database."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from sailplane.controller import drones
from sailplane.controller.app import create_app
from sailplane.controller.config import ControllerConfig
from sailplane.controller.db.engine import make_engine, migrate
from sailplane.credentials import Role, mint
from sailplane.mounts.policy import Access
from sailplane.protocol import Hello, HostVolumeOffer

POSTGRES_URL = os.environ.get(
    "SAILPLANE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:55432/sailplane_test"
)
PROXY_URL = "http://proxy.test:9091"
CONTROLLER_URL = "http://controller.test:9090"
SECRET = "test-secret-0123456789abcdefghijklmnopqrstuvwxyz"
API_TOKEN = mint(SECRET, Role.API, "tests")


def bearer(role: Role = Role.API, subject: str = "tests") -> dict[str, str]:
    return {"authorization": f"Bearer {mint(SECRET, role, subject)}"}


def reset_postgres() -> str:
    """Give the test PostgreSQL database an empty schema, or skip if it does not answer."""
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
            conn.execute("CREATE SCHEMA public")
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} does not answer (run scripts/setup, or set "
                    f"SAILPLANE_TEST_POSTGRES_URL): {exc}".strip())
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return reset_postgres()
    return f"sqlite:///{tmp_path}/c.db"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/c.db"


@pytest.fixture
def postgres_url() -> str:
    return reset_postgres()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated engine, without any app around it."""
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def add_drone(
    engine: Engine, drone_id: str = "d1", pool: str = "",
    volumes: dict[str, Access] | None = None, namespaces: list[str] | None = None,
) -> None:
    offers = [HostVolumeOffer(name=name, access=access, namespaces=namespaces)
              for name, access in (volumes or {}).items()]
    drones.register(engine, Hello(drone_id=drone_id, pool=pool, runtime="fake",
                                  host_volumes=offers))


def spawn_body(name: str = "doc-1", tag: str = "", namespace: str = "",
               **spawn: Any) -> dict[str, Any]:
    executable = {"image": "sailplane/demo:latest", **spawn.pop("executable", {})}
    return {"key": {"name": name, "namespace": namespace, "tag": tag},
            "spawn_config": {"executable": executable, **spawn}}


def config_for(url: str, **config: Any) -> ControllerConfig:
    """A controller over ``url`` whose credentials are signed with :data:`SECRET`."""
    config.setdefault("secrets", [] if config.get("insecure") else [SECRET])
    return ControllerConfig(database_url=url, proxy_url=PROXY_URL,
                            controller_url=CONTROLLER_URL, **config)


def make_client(url: str, **config: Any) -> Iterator[TestClient]:
    """A TestClient of an app over ``url``; it sends :data:`API_TOKEN` on every request."""
    app = create_app(config_for(url, **config))
    with TestClient(app, headers={"authorization": f"Bearer {API_TOKEN}"}) as client:
        yield client
    app.state.engine.dispose()


@pytest.fixture
def client(sqlite_url: str) -> Iterator[TestClient]:
    """An app over a fresh SQLite database (migrated by its lifespan), no drone yet."""
    yield from make_client(sqlite_url)


@pytest.fixture
def any_client(database_url: str) -> Iterator[TestClient]:
    """The same over each database."""
    yield from make_client(database_url)
