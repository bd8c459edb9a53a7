"""Declarative, secure volume mounts (docs/mounts.md).

The pipeline reads forward through these modules: ``sailplane.spec`` (the request) ->
``policy`` (what the operator allows) -> ``validate`` (pure rules) -> ``resolve`` (the walk on
disk) -> ``resolved`` (what a runtime receives) -> ``sailplane.runtime.*.mounts`` (translation).
``plan`` strings them together.
"""
