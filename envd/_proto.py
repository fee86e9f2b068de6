"""Message classes of `process.proto` and `filesystem.proto`, built at run time from descriptors.

No generated `_pb2` modules: the guest runs Debian's python3-protobuf (3.21) while the host venv has a newer
protobuf, and generated code is tied to the protoc that made it. Instead the two files are described here as
`FileDescriptorProto`s (names, field numbers and types exactly as in E2B's spec) and loaded into a private
descriptor pool; the classes come from whichever message factory API the installed protobuf offers.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import Message

_F = descriptor_pb2.FieldDescriptorProto

# (name, number, type, [type_name], [flags]) where flags: "rep" repeated, "opt" proto3 optional, "oneof:<name>"
_STRING, _BOOL, _UINT32, _INT64, _SINT32, _BYTES = (
    _F.TYPE_STRING,
    _F.TYPE_BOOL,
    _F.TYPE_UINT32,
    _F.TYPE_INT64,
    _F.TYPE_SINT32,
    _F.TYPE_BYTES,
)
_MSG, _ENUM = _F.TYPE_MESSAGE, _F.TYPE_ENUM

FieldSpec = tuple[Any, ...]


def _message(
    file: descriptor_pb2.FileDescriptorProto | descriptor_pb2.DescriptorProto,
    name: str,
    fields: list[FieldSpec],
    *,
    maps: dict[str, int] | None = None,
) -> descriptor_pb2.DescriptorProto:
    msg = file.message_type.add() if isinstance(file, descriptor_pb2.FileDescriptorProto) else file.nested_type.add()
    msg.name = name
    oneofs: dict[str, int] = {}
    for spec in fields:
        fname, number, ftype = spec[0], spec[1], spec[2]
        type_name = spec[3] if len(spec) > 3 and spec[3] else ""
        flags = spec[4] if len(spec) > 4 else ""
        field = msg.field.add()
        field.name = fname
        field.number = number
        field.type = ftype
        field.label = _F.LABEL_REPEATED if "rep" in flags else _F.LABEL_OPTIONAL
        field.json_name = _camel(fname)
        if type_name:
            field.type_name = type_name
        oneof = ""
        if "opt" in flags:
            field.proto3_optional = True
            oneof = "_" + fname
        elif "oneof:" in flags:
            oneof = flags.split("oneof:", 1)[1]
        if oneof:
            if oneof not in oneofs:
                oneofs[oneof] = len(msg.oneof_decl)
                msg.oneof_decl.add().name = oneof
            field.oneof_index = oneofs[oneof]
    # Synthetic oneofs of proto3 optionals must come after the real ones: protobuf requires it.
    real = [d.name for d in msg.oneof_decl if not d.name.startswith("_")]
    synthetic = [d.name for d in msg.oneof_decl if d.name.startswith("_")]
    order = {name: i for i, name in enumerate(real + synthetic)}
    if [d.name for d in msg.oneof_decl] != real + synthetic:
        for field in msg.field:
            if field.HasField("oneof_index"):
                field.oneof_index = order[msg.oneof_decl[field.oneof_index].name]
        del msg.oneof_decl[:]
        for name in real + synthetic:
            msg.oneof_decl.add().name = name
    for map_field, number in (maps or {}).items():
        entry = _message(msg, _camel(map_field, upper=True) + "Entry", [("key", 1, _STRING), ("value", 2, _STRING)])
        entry.options.map_entry = True
        field = msg.field.add()
        field.name = map_field
        field.number = number
        field.type = _MSG
        field.label = _F.LABEL_REPEATED
        field.json_name = _camel(map_field)
        field.type_name = f".{file.package if isinstance(file, descriptor_pb2.FileDescriptorProto) else ''}"
    return msg


def _camel(name: str, *, upper: bool = False) -> str:
    parts = name.split("_")
    out = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
    return out[:1].upper() + out[1:] if upper else out


def _enum(file: descriptor_pb2.FileDescriptorProto, name: str, values: list[tuple[str, int]]) -> None:
    enum = file.enum_type.add()
    enum.name = name
    for vname, number in values:
        value = enum.value.add()
        value.name = vname
        value.number = number


def _fix_map_type_names(file: descriptor_pb2.FileDescriptorProto) -> None:
    """Point map fields at their nested `*Entry` type (needs the full message path, known only here)."""

    def walk(msg: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        path = f"{prefix}.{msg.name}"
        for field in msg.field:
            if field.type == _MSG and field.label == _F.LABEL_REPEATED and field.type_name.startswith("."):
                entry = _camel(field.name, upper=True) + "Entry"
                if any(n.name == entry for n in msg.nested_type) and field.type_name.count(".") <= 1:
                    field.type_name = f"{path}.{entry}"
        for nested in msg.nested_type:
            walk(nested, path)

    for msg in file.message_type:
        walk(msg, f".{file.package}")


def _process_file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name="process/process.proto", package="process", syntax="proto3")
    p = ".process."
    pty = _message(f, "PTY", [("size", 1, _MSG, p + "PTY.Size")])
    _message(pty, "Size", [("cols", 1, _UINT32), ("rows", 2, _UINT32)])
    _message(
        f,
        "ProcessConfig",
        [("cmd", 1, _STRING), ("args", 2, _STRING, "", "rep"), ("cwd", 4, _STRING, "", "opt")],
        maps={"envs": 3},
    )
    _message(f, "ListRequest", [])
    _message(
        f,
        "ProcessInfo",
        [("config", 1, _MSG, p + "ProcessConfig"), ("pid", 2, _UINT32), ("tag", 3, _STRING, "", "opt")],
    )
    _message(f, "ListResponse", [("processes", 1, _MSG, p + "ProcessInfo", "rep")])
    _message(
        f,
        "StartRequest",
        [
            ("process", 1, _MSG, p + "ProcessConfig"),
            ("pty", 2, _MSG, p + "PTY", "opt"),
            ("tag", 3, _STRING, "", "opt"),
            ("stdin", 4, _BOOL, "", "opt"),
        ],
    )
    _message(f, "UpdateRequest", [("process", 1, _MSG, p + "ProcessSelector"), ("pty", 2, _MSG, p + "PTY", "opt")])
    _message(f, "UpdateResponse", [])
    event = _message(
        f,
        "ProcessEvent",
        [
            ("start", 1, _MSG, p + "ProcessEvent.StartEvent", "oneof:event"),
            ("data", 2, _MSG, p + "ProcessEvent.DataEvent", "oneof:event"),
            ("end", 3, _MSG, p + "ProcessEvent.EndEvent", "oneof:event"),
            ("keepalive", 4, _MSG, p + "ProcessEvent.KeepAlive", "oneof:event"),
        ],
    )
    _message(event, "StartEvent", [("pid", 1, _UINT32)])
    _message(
        event,
        "DataEvent",
        [
            ("stdout", 1, _BYTES, "", "oneof:output"),
            ("stderr", 2, _BYTES, "", "oneof:output"),
            ("pty", 3, _BYTES, "", "oneof:output"),
        ],
    )
    _message(
        event,
        "EndEvent",
        [("exit_code", 1, _SINT32), ("exited", 2, _BOOL), ("status", 3, _STRING), ("error", 4, _STRING, "", "opt")],
    )
    _message(event, "KeepAlive", [])
    _message(f, "StartResponse", [("event", 1, _MSG, p + "ProcessEvent")])
    _message(f, "ConnectResponse", [("event", 1, _MSG, p + "ProcessEvent")])
    _message(
        f, "SendInputRequest", [("process", 1, _MSG, p + "ProcessSelector"), ("input", 2, _MSG, p + "ProcessInput")]
    )
    _message(f, "SendInputResponse", [])
    _message(f, "ProcessInput", [("stdin", 1, _BYTES, "", "oneof:input"), ("pty", 2, _BYTES, "", "oneof:input")])
    stream = _message(
        f,
        "StreamInputRequest",
        [
            ("start", 1, _MSG, p + "StreamInputRequest.StartEvent", "oneof:event"),
            ("data", 2, _MSG, p + "StreamInputRequest.DataEvent", "oneof:event"),
            ("keepalive", 3, _MSG, p + "ProcessEvent.KeepAlive", "oneof:event"),
        ],
    )
    _message(stream, "StartEvent", [("process", 1, _MSG, p + "ProcessSelector")])
    _message(stream, "DataEvent", [("input", 2, _MSG, p + "ProcessInput")])
    _message(f, "StreamInputResponse", [])
    _enum(f, "Signal", [("SIGNAL_UNSPECIFIED", 0), ("SIGNAL_SIGTERM", 15), ("SIGNAL_SIGKILL", 9)])
    _message(f, "SendSignalRequest", [("process", 1, _MSG, p + "ProcessSelector"), ("signal", 2, _ENUM, p + "Signal")])
    _message(f, "SendSignalResponse", [])
    _message(f, "CloseStdinRequest", [("process", 1, _MSG, p + "ProcessSelector")])
    _message(f, "CloseStdinResponse", [])
    _message(f, "ConnectRequest", [("process", 1, _MSG, p + "ProcessSelector")])
    _message(
        f, "ProcessSelector", [("pid", 1, _UINT32, "", "oneof:selector"), ("tag", 2, _STRING, "", "oneof:selector")]
    )
    _fix_map_type_names(f)
    return f


def _filesystem_file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="filesystem/filesystem.proto",
        package="filesystem",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    p = ".filesystem."
    _message(f, "MoveRequest", [("source", 1, _STRING), ("destination", 2, _STRING)])
    _message(f, "MoveResponse", [("entry", 1, _MSG, p + "EntryInfo")])
    _message(f, "MakeDirRequest", [("path", 1, _STRING)])
    _message(f, "MakeDirResponse", [("entry", 1, _MSG, p + "EntryInfo")])
    _message(f, "RemoveRequest", [("path", 1, _STRING)])
    _message(f, "RemoveResponse", [])
    _message(f, "StatRequest", [("path", 1, _STRING)])
    _message(f, "StatResponse", [("entry", 1, _MSG, p + "EntryInfo")])
    _message(
        f,
        "EntryInfo",
        [
            ("name", 1, _STRING),
            ("type", 2, _ENUM, p + "FileType"),
            ("path", 3, _STRING),
            ("size", 4, _INT64),
            ("mode", 5, _UINT32),
            ("permissions", 6, _STRING),
            ("owner", 7, _STRING),
            ("group", 8, _STRING),
            ("modified_time", 9, _MSG, ".google.protobuf.Timestamp"),
            ("symlink_target", 10, _STRING, "", "opt"),
            ("is_symlink", 12, _BOOL),  # e2b >= 2.6x: the entry is a link, `type` is its target's
        ],
        maps={"metadata": 11},
    )
    _enum(
        f,
        "FileType",
        [("FILE_TYPE_UNSPECIFIED", 0), ("FILE_TYPE_FILE", 1), ("FILE_TYPE_DIRECTORY", 2), ("FILE_TYPE_SYMLINK", 3)],
    )
    _message(f, "ListDirRequest", [("path", 1, _STRING), ("depth", 2, _UINT32)])
    _message(f, "ListDirResponse", [("entries", 1, _MSG, p + "EntryInfo", "rep")])
    watch = [
        ("path", 1, _STRING),
        ("recursive", 2, _BOOL),
        ("include_entry", 3, _BOOL),
        ("allow_network_mounts", 4, _BOOL),
    ]
    _message(f, "WatchDirRequest", watch)
    _message(
        f,
        "FilesystemEvent",
        [("name", 1, _STRING), ("type", 2, _ENUM, p + "EventType"), ("entry", 3, _MSG, p + "EntryInfo", "opt")],
    )
    wresp = _message(
        f,
        "WatchDirResponse",
        [
            ("start", 1, _MSG, p + "WatchDirResponse.StartEvent", "oneof:event"),
            ("filesystem", 2, _MSG, p + "FilesystemEvent", "oneof:event"),
            ("keepalive", 3, _MSG, p + "WatchDirResponse.KeepAlive", "oneof:event"),
        ],
    )
    _message(wresp, "StartEvent", [])
    _message(wresp, "KeepAlive", [])
    _message(f, "CreateWatcherRequest", watch)
    _message(f, "CreateWatcherResponse", [("watcher_id", 1, _STRING)])
    _message(f, "GetWatcherEventsRequest", [("watcher_id", 1, _STRING)])
    _message(f, "GetWatcherEventsResponse", [("events", 1, _MSG, p + "FilesystemEvent", "rep")])
    _message(f, "RemoveWatcherRequest", [("watcher_id", 1, _STRING)])
    _message(f, "RemoveWatcherResponse", [])
    _enum(
        f,
        "EventType",
        [
            ("EVENT_TYPE_UNSPECIFIED", 0),
            ("EVENT_TYPE_CREATE", 1),
            ("EVENT_TYPE_WRITE", 2),
            ("EVENT_TYPE_REMOVE", 3),
            ("EVENT_TYPE_RENAME", 4),
            ("EVENT_TYPE_CHMOD", 5),
        ],
    )
    _fix_map_type_names(f)
    return f


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(_process_file().SerializeToString())
    pool.AddSerializedFile(_filesystem_file().SerializeToString())
    return pool


_FACTORIES: dict[int, Any] = {}


def _message_class(pool: descriptor_pool.DescriptorPool, full_name: str) -> type[Message]:
    """The class of a message, with its nested message classes reachable as attributes (`ProcessEvent.EndEvent`).

    protobuf >= 4.22 has `GetMessageClass`; older ones (Debian's 3.21) need one MessageFactory per pool, kept, so
    that a message type always maps to the same class. Their classes lack the nested-class attributes; added here.
    """
    desc = pool.FindMessageTypeByName(full_name)
    get_class = getattr(message_factory, "GetMessageClass", None)
    if get_class is None:
        factory: Any = _FACTORIES.get(id(pool))
        if factory is None:
            factory = _FACTORIES[id(pool)] = message_factory.MessageFactory(pool)
        get_class = factory.GetPrototype
    return _with_nested(desc, get_class)


def _with_nested(desc: Any, get_class: Any) -> type[Message]:
    cls: type[Message] = get_class(desc)
    for nested in desc.nested_types:
        if nested.GetOptions().map_entry:
            continue
        if not hasattr(cls, nested.name):
            setattr(cls, nested.name, _with_nested(nested, get_class))
    return cls


class Messages:
    """Namespace of message classes for one package: `process.StartRequest` etc., looked up by attribute."""

    def __init__(self, pool: descriptor_pool.DescriptorPool, package: str) -> None:
        self._pool = pool
        self._package = package
        self._cache: dict[str, type[Message]] = {}

    def __getattr__(self, name: str) -> Any:  # a message class; Any because the classes are made at run time
        if name.startswith("_"):
            raise AttributeError(name)
        cls = self._cache.get(name)
        if cls is None:
            try:
                cls = _message_class(self._pool, f"{self._package}.{name}")
            except KeyError as exc:
                raise AttributeError(f"{self._package}.{name}") from exc
            self._cache[name] = cls
        return cls

    def enum_value(self, enum: str, name: str) -> int:
        return int(self._pool.FindEnumTypeByName(f"{self._package}.{enum}").values_by_name[name].number)

    def enum_name(self, enum: str, number: int) -> str:
        values = self._pool.FindEnumTypeByName(f"{self._package}.{enum}").values_by_number
        return str(values[number].name) if number in values else str(number)


POOL = _build_pool()
process = Messages(POOL, "process")
filesystem = Messages(POOL, "filesystem")
