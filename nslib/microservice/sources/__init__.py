"""Container runtimes the microservice tracker can follow.

* :class:`DockerSource`: a docker daemon (Docker SDK for Python).
* :class:`PodmanSource`: rootful podman through its API socket (libpod events).
* :class:`ContainerdSource`: containerd over gRPC, any namespace, including
  Kubernetes' ``k8s.io`` (needs ``pip install 'nslib[containerd]'``).
"""

from __future__ import annotations

from .base import (
    ContainerState,
    EventStream,
    Source,
    SourceEvent,
    SourceNotFound,
    SourceUnavailable,
)
from .docker import DockerSource

__all__ = [
    "ContainerState",
    "ContainerdSource",
    "DockerSource",
    "EventStream",
    "PodmanSource",
    "Source",
    "SourceEvent",
    "SourceNotFound",
    "SourceUnavailable",
]


def __getattr__(name: str) -> object:
    # Lazily: each pulls in its own client code.
    if name == "PodmanSource":
        from .podman import PodmanSource

        return PodmanSource
    if name == "ContainerdSource":
        from .containerd import ContainerdSource

        return ContainerdSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
