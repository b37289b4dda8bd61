"""Microservices: a live ``label -> container`` map that follows a container runtime.

See :class:`MicroserviceTracker`; the runtimes are in :mod:`nslib.microservice.sources`.
"""

from __future__ import annotations

from .._docker_state import EventKind
from .model import Microservice, MicroserviceEvent, TrackerHealth
from .sources import ContainerState, DockerSource, Source, SourceEvent
from .tracker import DEFAULT_LABEL_ENV, MicroserviceTracker

__all__ = [
    "DEFAULT_LABEL_ENV",
    "ContainerState",
    "ContainerdSource",
    "DockerSource",
    "EventKind",
    "Microservice",
    "MicroserviceEvent",
    "MicroserviceTracker",
    "PodmanSource",
    "Source",
    "SourceEvent",
    "TrackerHealth",
]


def __getattr__(name: str) -> object:
    if name in ("PodmanSource", "ContainerdSource"):
        from . import sources

        return getattr(sources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
