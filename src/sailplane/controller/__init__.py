"""The controller: HTTP API, database, scheduling, key locks and deadlines.

See docs/architecture.md.
"""
