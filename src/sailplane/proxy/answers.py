"""Responses the proxy writes itself, never a backend's: JSON errors and the slash redirect.

Every error body is ``{"error": {"code": ..., "message": ...}}``; the codes:

====  ========================  ===============================================================
308   ``add_slash``             ``/TOKEN`` redirected to ``/TOKEN/`` (``location`` header)
400   ``bad_request``           malformed or ambiguous request framing (the message says what)
404   ``no_route``              no ready backend for the token
408   ``head_timeout``          the request head did not arrive within ``head_timeout``
408   ``body_timeout``          the request body paused longer than ``body_timeout``
431   ``header_too_large``      request head (or trailers) over ``max_header_bytes``
431   ``too_many_headers``      more than ``max_headers`` header lines
502   ``backend_unreachable``   the backend refused the connection
502   ``backend_closed``        the backend closed the connection before it answered
502   ``bad_response``          the backend's response could not be read (reason in the log)
503   ``too_many_connections``  ``max_connections`` client connections are open
503   ``route_unavailable``     the token is not cached and the controller cannot be asked
====  ========================  ===============================================================

>>> ours = answer(400, "bad_request", "no", close=True)
>>> head, _, body = ours.partition(b"\\r\\n\\r\\n")
>>> b"content-length: %d" % len(body) in head
True
"""

from __future__ import annotations

import json

REASONS = {
    308: b"Permanent Redirect",
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}


def answer(status: int, code: str, message: str, *, close: bool, headers: bytes = b"",
           head_only: bool = False) -> bytes:
    """A complete response: head (with ``headers``, each line ending in CRLF) and JSON body
    (none if ``head_only``, the answer to a HEAD request)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Error")),
        b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
        headers, b"connection: close\r\n" if close else b"", b"\r\n",
        b"" if head_only else body,
    ))


def bad_request(reason: str) -> bytes:
    return answer(400, "bad_request", f"malformed HTTP: {reason}", close=True)


RETRY_AFTER = b"retry-after: 1\r\n"  # with each 503: the condition is short-lived
TOO_MANY_CONNECTIONS = answer(503, "too_many_connections",
                              "the proxy has too many open connections; try again",
                              close=True, headers=RETRY_AFTER)
HEAD_TIMEOUT = answer(408, "head_timeout", "the request head took too long", close=True)
BODY_TIMEOUT = answer(408, "body_timeout", "the request body stalled", close=True)
HEADER_TOO_LARGE = answer(431, "header_too_large", "the request head is too large", close=True)
TOO_MANY_HEADERS = answer(431, "too_many_headers", "the request has too many headers",
                          close=True)
