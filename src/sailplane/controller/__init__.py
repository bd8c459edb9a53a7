"""The controller: HTTP API, database, scheduling, key locks and deadlines (DESIGN 1-3)."""
