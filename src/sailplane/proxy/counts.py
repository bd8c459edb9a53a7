"""Live connections per backend, as the proxy reports them for idle detection.

A report lists every backend that has a live connection now, that had one at any moment
since the last report (however short: a request of a few milliseconds between two reports
is activity all the same), or that was listed with live connections in the last report and
has none now (listed once more, with 0). The controller restarts the idle time of each.

>>> counts = ConnectionCounts()
>>> counts.opened("b-1"); counts.closed("b-1"); counts.opened("b-2")
>>> counts.report()
{'b-2': 1, 'b-1': 0}
>>> counts.closed("b-2"); counts.report()
{'b-2': 0}
>>> counts.report()
{}
"""

from __future__ import annotations


class ConnectionCounts:
    def __init__(self) -> None:
        # A plain dict, not a Counter: ``opened`` and ``closed`` run on every request, and a
        # Counter's item assignment goes through a Python-level slot (twice the cost).
        self.live: dict[str, int] = {}
        self._touched: set[str] = set()  # had a connection since the last report
        self._reported: set[str] = set()  # listed with live connections in the last report

    def opened(self, backend_id: str) -> None:
        live = self.live
        live[backend_id] = live.get(backend_id, 0) + 1
        self._touched.add(backend_id)

    def closed(self, backend_id: str) -> None:
        live = self.live
        live[backend_id] = live.get(backend_id, 0) - 1

    def report(self) -> dict[str, int]:
        """The counts to send now (empty: nothing to send); starts the next interval."""
        counts = {backend: n for backend, n in self.live.items() if n > 0}
        for backend in [b for b, n in self.live.items() if n <= 0]:
            del self.live[backend]
        for backend in self._touched | self._reported:
            counts.setdefault(backend, 0)
        self._touched = set()
        self._reported = {backend for backend, n in counts.items() if n > 0}
        return counts
