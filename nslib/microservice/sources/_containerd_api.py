"""The few containerd gRPC messages the tracker needs, described at run time.

containerd publishes its API as ``.proto`` files; the only PyPI package of
generated stubs (``containerd``, 2021) targets an old protobuf and is
unmaintained.  Rather than vendor generated code (tied to one protobuf
release) or run ``grpcio-tools`` at install time, this module describes
the subset of messages the tracker reads, with containerd's own field
numbers and types (``api/services/{events,tasks,containers}/v1``,
``api/types/task/task.proto``, ``api/events``), as a ``FileDescriptorProto``
built in Python.  Unknown fields are skipped by protobuf, so a newer
containerd that adds fields is read the same way.  Needs ``grpcio`` and
``protobuf`` (``pip install nslib[containerd]``).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = [
    "CONTAINERS_GET",
    "CONTAINERS_LIST",
    "EVENTS_PUBLISH",
    "EVENTS_SUBSCRIBE",
    "TASKS_GET",
    "TASKS_LIST",
    "M",
]

EVENTS_SUBSCRIBE = "/containerd.services.events.v1.Events/Subscribe"
EVENTS_PUBLISH = "/containerd.services.events.v1.Events/Publish"
TASKS_LIST = "/containerd.services.tasks.v1.Tasks/List"
TASKS_GET = "/containerd.services.tasks.v1.Tasks/Get"
CONTAINERS_GET = "/containerd.services.containers.v1.Containers/Get"
CONTAINERS_LIST = "/containerd.services.containers.v1.Containers/List"

_PACKAGE = "nslib.containerd.v1"
_lock = threading.Lock()
_classes: dict[str, Any] = {}

# (message, [(field, number, type, repeated, message type)])
_STRING, _UINT32, _INT32, _MESSAGE = "string", "uint32", "int32", "message"
_SPEC: list[tuple[str, list[tuple[str, int, str, bool, str | None]]]] = [
    ("SubscribeRequest", [("filters", 1, _STRING, True, None)]),
    (
        "PublishRequest",
        [
            ("topic", 1, _STRING, False, None),
            ("event", 2, _MESSAGE, False, ".google.protobuf.Any"),
        ],
    ),
    ("Empty", []),  # google.protobuf.Empty's wire form
    (
        "Envelope",
        [
            ("timestamp", 1, _MESSAGE, False, ".google.protobuf.Timestamp"),
            ("namespace", 2, _STRING, False, None),
            ("topic", 3, _STRING, False, None),
            ("event", 4, _MESSAGE, False, ".google.protobuf.Any"),
        ],
    ),
    # TaskStart, TaskExit, TaskDelete (container_id = 1) and ContainerCreate,
    # ContainerUpdate, ContainerDelete (id = 1): field 1 names the container
    # in all six.
    ("ContainerRef", [("id", 1, _STRING, False, None)]),
    # api/events/task.proto: the started task's process.
    (
        "TaskStart",
        [("container_id", 1, _STRING, False, None), ("pid", 2, _UINT32, False, None)],
    ),
    (
        "Process",
        [
            ("container_id", 1, _STRING, False, None),
            ("id", 2, _STRING, False, None),
            ("pid", 3, _UINT32, False, None),
            ("status", 4, _INT32, False, None),  # enum Status: RUNNING = 2, PAUSED = 4
        ],
    ),
    ("ListTasksRequest", [("filter", 1, _STRING, False, None)]),
    ("ListTasksResponse", [("tasks", 1, _MESSAGE, True, "Process")]),
    (
        "GetTaskRequest",
        [("container_id", 1, _STRING, False, None), ("exec_id", 2, _STRING, False, None)],
    ),
    ("GetTaskResponse", [("process", 1, _MESSAGE, False, "Process")]),
    (
        "Container",
        [
            ("id", 1, _STRING, False, None),
            ("labels", 2, _MESSAGE, True, "Container.LabelsEntry"),
            ("image", 3, _STRING, False, None),
            ("spec", 5, _MESSAGE, False, ".google.protobuf.Any"),
            ("created_at", 8, _MESSAGE, False, ".google.protobuf.Timestamp"),
            ("sandbox", 11, _STRING, False, None),
        ],
    ),
    ("GetContainerRequest", [("id", 1, _STRING, False, None)]),
    ("GetContainerResponse", [("container", 1, _MESSAGE, False, "Container")]),
    ("ListContainersRequest", [("filters", 1, _STRING, True, None)]),
    ("ListContainersResponse", [("containers", 1, _MESSAGE, True, "Container")]),
]


def _build() -> dict[str, Any]:
    from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, timestamp_pb2
    from google.protobuf.message_factory import GetMessageClass

    fdp = descriptor_pb2.FileDescriptorProto(
        name="nslib/containerd_subset.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=[any_pb2.DESCRIPTOR.name, timestamp_pb2.DESCRIPTOR.name],
    )
    f = descriptor_pb2.FieldDescriptorProto
    types = {_STRING: f.TYPE_STRING, _UINT32: f.TYPE_UINT32, _INT32: f.TYPE_INT32}
    for name, fields in _SPEC:
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, repeated, tname in fields:
            fd = m.field.add(
                name=fname,
                number=number,
                label=f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL,
                json_name=fname,
            )
            if ftype == _MESSAGE:
                fd.type = f.TYPE_MESSAGE
                assert tname is not None
                fd.type_name = tname if tname.startswith(".") else f".{_PACKAGE}.{tname}"
            else:
                fd.type = types[ftype]
        if name == "Container":  # map<string, string> labels = 2
            entry = m.nested_type.add(name="LabelsEntry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
            entry.field.add(name="value", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    pool = descriptor_pool.Default()
    try:
        fd_ = pool.FindFileByName(fdp.name)
    except KeyError:
        fd_ = pool.Add(fdp)
        if not hasattr(fd_, "message_types_by_name"):  # older protobuf returns None
            fd_ = pool.FindFileByName(fdp.name)
    return {name: GetMessageClass(fd_.message_types_by_name[name]) for name, _ in _SPEC}


class _Messages:
    """Lazily built message classes: ``M.Envelope``, ``M.Process``, ..."""

    def __getattr__(self, name: str) -> Any:
        with _lock:
            if not _classes:
                _classes.update(_build())
        try:
            return _classes[name]
        except KeyError:
            raise AttributeError(name) from None


M = _Messages()
