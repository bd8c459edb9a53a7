"""A proxy's route request for a backend that is still starting waits for its ``ready``.

A client is handed a backend's URL by ``/ctrl/connect`` before the backend runs. Answering
its first requests "no route" (the proxy's 404) at once made every client poll, and each
poll cost the proxy, this controller and the database a lookup, on the same cores the spawn
needs, plus up to a polling interval after ``ready``. As Plane's proxy does, the request is
held instead: the controller answers a route request for a token whose backend is on its way
to ``ready`` (spawned, not asked to stop) when that backend's state changes (this
controller's drone events wake it; other controllers' are found by polling), so the proxy
forwards the request the moment the backend is ready. A backend that ends, or that is still
not ready after :data:`HOLD_SECONDS`, is answered as before: no route (404). The proxy asks
once per token however many clients wait (``proxy/routes.py``), so a held request costs one
lookup per state change, not one per client.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine

from sailplane.controller import routes
from sailplane.controller.notify import Notifier, wait_set
from sailplane.protocol import RouteInfo
from sailplane.proxy.routes import ROUTE_LOOKUP_TIMEOUT_SECONDS

# Answered within the proxy's own wait for a lookup, so a backend slow to start (an image
# pull) ends as no route (404) rather than as the proxy's "controller unavailable" (503).
HOLD_SECONDS = ROUTE_LOOKUP_TIMEOUT_SECONDS - 1.0
# The longest a held request misses a state change another controller recorded.
POLL_SECONDS = 0.25


async def route_when_ready(engine: Engine, notifier: Notifier, token: str) -> RouteInfo:
    """The token's route, once its backend is ready; the empty answer when the token leads
    nowhere live, its backend stops first, or it is not ready within :data:`HOLD_SECONDS`."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + HOLD_SECONDS
    route, starting = await asyncio.to_thread(routes.find, engine, token)
    while starting is not None and loop.time() < give_up_at:
        # Watched before the state is read again: a change during the read still wakes us.
        changed = notifier.changed(f"backend:{starting}")
        route, starting = await asyncio.to_thread(routes.find, engine, token)
        if starting is not None:
            await wait_set(changed, min(POLL_SECONDS, give_up_at - loop.time()))
    return route
