"""Container runtimes the microservice tracker can follow.

* :class:`DockerSource`: a docker daemon (Docker SDK for Python).
* :class:`PodmanSource`: rootful podman through its API socket (libpod events).
"""

from __future__ import annotations

from .base import ContainerState, EventStream, Source, SourceEvent, SourceNotFound
from .docker import DockerSource

__all__ = [
    "ContainerState",
    "DockerSource",
    "EventStream",
    "PodmanSource",
    "Source",
    "SourceEvent",
    "SourceNotFound",
]


def __getattr__(name: str) -> object:
    # Lazily: each pulls in its own client code.
    if name == "PodmanSource":
        from .podman import PodmanSource

        return PodmanSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
