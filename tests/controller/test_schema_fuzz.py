"""schemathesis against the controller's own OpenAPI schema: no input makes it fail with a
5xx, except the documented 503 when no drone can take a backend."""

from __future__ import annotations

import tempfile

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

from sailplane.controller.app import create_app
from sailplane.controller.db.engine import make_engine, migrate
from sailplane.controller.drones import register
from sailplane.mounts.policy import Access
from sailplane.protocol import Hello, HostVolumeOffer
from tests.controller.conftest import API_TOKEN, config_for


def _controller_app() -> FastAPI:
    # Built at import: schemathesis parametrizes from a schema object, before any fixture.
    database = tempfile.mkdtemp(prefix="sailplane-fuzz-")
    engine = make_engine(f"sqlite:///{database}/fuzz.db")
    migrate(engine)
    register(engine, Hello(drone_id="fuzz-drone", runtime="docker", host_volumes=[
        HostVolumeOffer(name="default", access=Access.RW),
    ]))
    return create_app(config_for(f"sqlite:///{database}/fuzz.db"), engine)


schema = schemathesis.openapi.from_asgi("/openapi.json", _controller_app())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_makes_the_controller_fail(case):
    response = case.call(headers={"authorization": f"Bearer {API_TOKEN}"})
    assert response.status_code < 500 or response.status_code == 503, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    )
