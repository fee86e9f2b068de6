"""Message definitions match process.proto / filesystem.proto of the reference: names, field numbers, types."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor, message_factory

from wrenn.envd import _proto

FD = descriptor.FieldDescriptor
S, B, U32, I64, SI32, BY, M, E = (
    FD.TYPE_STRING,
    FD.TYPE_BOOL,
    FD.TYPE_UINT32,
    FD.TYPE_INT64,
    FD.TYPE_SINT32,
    FD.TYPE_BYTES,
    FD.TYPE_MESSAGE,
    FD.TYPE_ENUM,
)

# message -> {field: (number, type)}; from the reference (section 3.2/3.3)
EXPECTED: dict[str, dict[str, tuple[int, int]]] = {
    "process.ProcessConfig": {"cmd": (1, S), "args": (2, S), "envs": (3, M), "cwd": (4, S)},
    "process.PTY": {"size": (1, M)},
    "process.PTY.Size": {"cols": (1, U32), "rows": (2, U32)},
    "process.StartRequest": {"process": (1, M), "pty": (2, M), "tag": (3, S), "stdin": (4, B)},
    "process.StartResponse": {"event": (1, M)},
    "process.ConnectResponse": {"event": (1, M)},
    "process.ConnectRequest": {"process": (1, M)},
    "process.ProcessEvent": {"start": (1, M), "data": (2, M), "end": (3, M), "keepalive": (4, M)},
    "process.ProcessEvent.StartEvent": {"pid": (1, U32)},
    "process.ProcessEvent.DataEvent": {"stdout": (1, BY), "stderr": (2, BY), "pty": (3, BY)},
    "process.ProcessEvent.EndEvent": {"exit_code": (1, SI32), "exited": (2, B), "status": (3, S), "error": (4, S)},
    "process.ProcessEvent.KeepAlive": {},
    "process.ProcessSelector": {"pid": (1, U32), "tag": (2, S)},
    "process.ListRequest": {},
    "process.ListResponse": {"processes": (1, M)},
    "process.ProcessInfo": {"config": (1, M), "pid": (2, U32), "tag": (3, S)},
    "process.UpdateRequest": {"process": (1, M), "pty": (2, M)},
    "process.UpdateResponse": {},
    "process.SendInputRequest": {"process": (1, M), "input": (2, M)},
    "process.SendInputResponse": {},
    "process.ProcessInput": {"stdin": (1, BY), "pty": (2, BY)},
    "process.StreamInputRequest": {"start": (1, M), "data": (2, M), "keepalive": (3, M)},
    "process.StreamInputRequest.StartEvent": {"process": (1, M)},
    "process.StreamInputRequest.DataEvent": {"input": (2, M)},
    "process.StreamInputResponse": {},
    "process.SendSignalRequest": {"process": (1, M), "signal": (2, E)},
    "process.SendSignalResponse": {},
    "process.CloseStdinRequest": {"process": (1, M)},
    "process.CloseStdinResponse": {},
    "filesystem.EntryInfo": {
        "name": (1, S),
        "type": (2, E),
        "path": (3, S),
        "size": (4, I64),
        "mode": (5, U32),
        "permissions": (6, S),
        "owner": (7, S),
        "group": (8, S),
        "modified_time": (9, M),
        "symlink_target": (10, S),
        "metadata": (11, M),
        "is_symlink": (12, B),
    },
    "filesystem.StatRequest": {"path": (1, S)},
    "filesystem.StatResponse": {"entry": (1, M)},
    "filesystem.MakeDirRequest": {"path": (1, S)},
    "filesystem.MakeDirResponse": {"entry": (1, M)},
    "filesystem.MoveRequest": {"source": (1, S), "destination": (2, S)},
    "filesystem.MoveResponse": {"entry": (1, M)},
    "filesystem.RemoveRequest": {"path": (1, S)},
    "filesystem.RemoveResponse": {},
    "filesystem.ListDirRequest": {"path": (1, S), "depth": (2, U32)},
    "filesystem.ListDirResponse": {"entries": (1, M)},
    "filesystem.WatchDirRequest": {
        "path": (1, S),
        "recursive": (2, B),
        "include_entry": (3, B),
        "allow_network_mounts": (4, B),
    },
    "filesystem.CreateWatcherRequest": {
        "path": (1, S),
        "recursive": (2, B),
        "include_entry": (3, B),
        "allow_network_mounts": (4, B),
    },
    "filesystem.CreateWatcherResponse": {"watcher_id": (1, S)},
    "filesystem.GetWatcherEventsRequest": {"watcher_id": (1, S)},
    "filesystem.GetWatcherEventsResponse": {"events": (1, M)},
    "filesystem.RemoveWatcherRequest": {"watcher_id": (1, S)},
    "filesystem.RemoveWatcherResponse": {},
    "filesystem.FilesystemEvent": {"name": (1, S), "type": (2, E), "entry": (3, M)},
    "filesystem.WatchDirResponse": {"start": (1, M), "filesystem": (2, M), "keepalive": (3, M)},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_message_fields(name: str) -> None:
    desc = _proto.POOL.FindMessageTypeByName(name)
    assert {f.name: (f.number, f.type) for f in desc.fields} == EXPECTED[name]


@pytest.mark.parametrize(
    ("message", "oneof", "fields"),
    [
        ("process.ProcessEvent", "event", {"start", "data", "end", "keepalive"}),
        ("process.ProcessEvent.DataEvent", "output", {"stdout", "stderr", "pty"}),
        ("process.ProcessSelector", "selector", {"pid", "tag"}),
        ("process.ProcessInput", "input", {"stdin", "pty"}),
        ("process.StreamInputRequest", "event", {"start", "data", "keepalive"}),
        ("filesystem.WatchDirResponse", "event", {"start", "filesystem", "keepalive"}),
    ],
)
def test_oneofs(message: str, oneof: str, fields: set[str]) -> None:
    desc = _proto.POOL.FindMessageTypeByName(message)
    assert {f.name for f in desc.oneofs_by_name[oneof].fields} == fields


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ("process.ProcessConfig", "cwd"),
        ("process.StartRequest", "pty"),
        ("process.StartRequest", "tag"),
        ("process.StartRequest", "stdin"),
        ("process.ProcessInfo", "tag"),
        ("process.UpdateRequest", "pty"),
        ("process.ProcessEvent.EndEvent", "error"),
        ("filesystem.EntryInfo", "symlink_target"),
        ("filesystem.FilesystemEvent", "entry"),
    ],
)
def test_optional_fields_track_presence(message: str, field: str) -> None:
    cls = getattr(_proto.Messages(_proto.POOL, message.split(".")[0]), message.split(".")[1])
    for part in message.split(".")[2:]:
        cls = getattr(cls, part)
    msg = cls()
    assert not msg.HasField(field)


def test_maps_and_enums() -> None:
    config = _proto.process.ProcessConfig(envs={"A": "1"})
    assert dict(config.envs) == {"A": "1"}
    assert _proto.process.enum_value("Signal", "SIGNAL_SIGKILL") == 9
    assert _proto.process.enum_value("Signal", "SIGNAL_SIGTERM") == 15
    assert _proto.filesystem.enum_name("FileType", 3) == "FILE_TYPE_SYMLINK"
    assert _proto.filesystem.enum_name("EventType", 5) == "EVENT_TYPE_CHMOD"
    assert _proto.filesystem.enum_name("EventType", 42) == "42"


def test_binary_round_trip() -> None:
    pb = _proto.process
    request = pb.StartRequest(process=pb.ProcessConfig(cmd="x", args=["a"], envs={"k": "v"}), tag="t", stdin=False)
    again = pb.StartRequest.FromString(request.SerializeToString())
    assert again == request
    assert again.HasField("stdin")
    assert again.stdin is False


def test_unknown_message_is_attribute_error() -> None:
    with pytest.raises(AttributeError):
        _proto.process.NoSuchMessage  # noqa: B018


@pytest.mark.skipif(
    not hasattr(message_factory.MessageFactory, "GetPrototype"), reason="this protobuf has only GetMessageClass"
)
def test_fallback_to_message_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(message_factory, "GetMessageClass", raising=False)
    cls = _proto._message_class(_proto.POOL, "process.ListRequest")
    assert cls.DESCRIPTOR.full_name == "process.ListRequest"
