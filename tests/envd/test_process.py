"""process.Process over the wire (JSON codec, hand-written client): every RPC, its semantics and error paths."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.envd.conftest import Connect, EnvdProcess, basic, end_event, envelope, output, parse_envelopes

START = "process.Process/Start"


def sh(script: str, **extra: Any) -> dict[str, Any]:
    return {"process": {"cmd": "/bin/sh", "args": ["-c", script], **extra}}


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_start_streams_start_output_and_end(rpc: Connect) -> None:
    messages = rpc.stream(START, sh("echo out; echo err >&2"))
    assert set(messages[0]["event"]["start"]) == {"pid"}
    assert output(messages) == b"out\n"
    assert output(messages, "stderr") == b"err\n"
    assert end_event(messages) == {"exited": True, "status": "exit status 0"}  # exitCode 0 is omitted (proto3 JSON)
    assert messages[-1] == ("end", {})


def test_nonzero_exit_code_and_error(rpc: Connect) -> None:
    end = end_event(rpc.stream(START, sh("exit 3")))
    assert end == {"exitCode": 3, "exited": True, "status": "exit status 3", "error": "exit status 3"}


def test_missing_command_is_invalid_argument(rpc: Connect) -> None:
    messages = rpc.stream(START, {"process": {"cmd": "/nonexistent/binary"}})
    assert messages == [("end", {"error": {"code": "invalid_argument", "message": messages[0][1]["error"]["message"]}})]


def test_env_precedence_and_user_variables(envd_server: str, rpc: Connect) -> None:
    with httpx.Client() as http:
        assert http.post(envd_server + "/init", json={"envVars": {"A": "sandbox", "B": "sandbox"}}).status_code == 204
    script = 'echo "$A $B $HOME $USER $LOGNAME"'
    messages = rpc.stream(START, sh(script, envs={"B": "request"}), headers=basic("root"))
    assert output(messages) == b"sandbox request /root root root\n"


def test_runs_as_basic_auth_user(rpc: Connect, os_user: str) -> None:
    messages = rpc.stream(START, sh("id -un; pwd; echo $HOME"), headers=basic(os_user))
    assert output(messages) == b"user\n/home/user\n/home/user\n"


def test_default_user_is_user_then_init_default(envd_server: str, rpc: Connect, os_user: str) -> None:
    assert output(rpc.stream(START, sh("id -un"))) == b"user\n"
    with httpx.Client() as http:
        response = http.post(envd_server + "/init", json={"defaultUser": "root", "defaultWorkdir": "/tmp"})
        assert response.status_code == 204
    assert output(rpc.stream(START, sh("id -un; pwd"))) == b"root\n/tmp\n"


def test_unknown_user_is_unauthenticated(rpc: Connect) -> None:
    messages = rpc.stream(START, sh("true"), headers=basic("nobody-here"))
    assert messages == [("end", {"error": {"code": "unauthenticated", "message": "invalid username: 'nobody-here'"}})]
    response = rpc.unary("process.Process/List", {}, headers=basic("nobody-here"))
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"


def test_cwd_rules(rpc: Connect, tmp_path: Any) -> None:
    root = basic("root")
    assert output(rpc.stream(START, sh("pwd", cwd=str(tmp_path)), headers=root)) == f"{tmp_path}\n".encode()
    rel = f"envd-rel-test-{os.getpid()}"
    os.makedirs(f"/root/{rel}", exist_ok=True)
    try:
        assert output(rpc.stream(START, sh("pwd", cwd=rel), headers=root)) == f"/root/{rel}\n".encode()
        assert output(rpc.stream(START, sh("pwd", cwd=f"~/{rel}"), headers=root)) == f"/root/{rel}\n".encode()
    finally:
        os.rmdir(f"/root/{rel}")
    missing = rpc.stream(START, sh("pwd", cwd="/no/such/dir"), headers=root)
    assert missing[0][1]["error"]["code"] == "invalid_argument"
    assert "/no/such/dir" in missing[0][1]["error"]["message"]


def test_stdin_send_and_close(rpc: Connect) -> None:
    with rpc.open_stream(START, sh("cat"), headers=basic("root")) as stream:
        pid = stream.next()[1]["event"]["start"]["pid"]
        payload = {"process": {"pid": pid}, "input": {"stdin": base64.b64encode(b"hello\n").decode()}}
        assert rpc.unary("process.Process/SendInput", payload).status_code == 200
        data = stream.next()[1]
        assert base64.b64decode(data["event"]["data"]["stdout"]) == b"hello\n"
        assert rpc.unary("process.Process/CloseStdin", {"process": {"pid": pid}}).status_code == 200
        rest = stream.until_end()
    assert end_event(rest)["exited"] is True


def test_stdin_false_gives_eof(rpc: Connect) -> None:
    messages = rpc.stream(START, {**sh("cat; echo done"), "stdin": False})
    assert output(messages) == b"done\n"
    pid = messages[0]["event"]["start"]["pid"]
    # the process is gone, stdin can no longer be written
    response = rpc.unary("process.Process/SendInput", {"process": {"pid": pid}, "input": {"stdin": "eA=="}})
    assert response.status_code == 404


def test_send_input_without_stdin_is_failed_precondition(rpc: Connect) -> None:
    with rpc.open_stream(START, {**sh("sleep 5"), "stdin": False}) as stream:
        pid = stream.next()[1]["event"]["start"]["pid"]
        response = rpc.unary("process.Process/SendInput", {"process": {"pid": pid}, "input": {"stdin": "eA=="}})
        assert response.status_code == 400
        assert response.json()["code"] == "failed_precondition"
        rpc.unary("process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
        stream.until_end()


@pytest.mark.parametrize(
    ("signal", "status"), [("SIGNAL_SIGKILL", "signal: killed"), ("SIGNAL_SIGTERM", "signal: terminated")]
)
def test_signals(rpc: Connect, signal: str, status: str) -> None:
    with rpc.open_stream(START, sh("sleep 30")) as stream:
        pid = stream.next()[1]["event"]["start"]["pid"]
        response = rpc.unary("process.Process/SendSignal", {"process": {"pid": pid}, "signal": signal})
        assert response.status_code == 200
        assert response.json() == {}
        end = end_event(stream.until_end())
    assert end == {"exitCode": -1, "status": status, "error": status}


def test_signal_kills_the_whole_process_group(rpc: Connect) -> None:
    with rpc.open_stream(START, sh("sleep 30 & sleep 30 & echo $!; wait")) as stream:
        pid = stream.next()[1]["event"]["start"]["pid"]
        child = int(base64.b64decode(stream.next()[1]["event"]["data"]["stdout"]))
        rpc.unary("process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
        stream.until_end()
    wait_for(lambda: not os.path.exists(f"/proc/{child}") or _zombie(child))


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_unspecified_signal_is_invalid(rpc: Connect) -> None:
    with rpc.open_stream(START, sh("sleep 5")) as stream:
        pid = stream.next()[1]["event"]["start"]["pid"]
        response = rpc.unary("process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_UNSPECIFIED"})
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_argument"
        rpc.unary("process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
        stream.until_end()


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("SendSignal", {"signal": "SIGNAL_SIGKILL"}),
        ("SendInput", {"input": {"stdin": "eA=="}}),
        ("CloseStdin", {}),
        ("Update", {"pty": {"size": {"cols": 10, "rows": 10}}}),
    ],
)
def test_unknown_pid_is_not_found(rpc: Connect, method: str, body: dict[str, Any]) -> None:
    response = rpc.unary(f"process.Process/{method}", {"process": {"pid": 999999}, **body})
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "message": "process with pid 999999 not found"}


def test_connect_unknown_pid_and_tag(rpc: Connect) -> None:
    by_pid = rpc.stream("process.Process/Connect", {"process": {"pid": 999999}})
    assert by_pid == [("end", {"error": {"code": "not_found", "message": "process with pid 999999 not found"}})]
    by_tag = rpc.stream("process.Process/Connect", {"process": {"tag": "nope"}})
    assert by_tag[0][1]["error"]["code"] == "not_found"
    no_selector = rpc.stream("process.Process/Connect", {"process": {}})
    assert no_selector[0][1]["error"]["code"] == "invalid_argument"


def test_list_shows_running_processes_with_tag_and_config(rpc: Connect) -> None:
    request = {**sh("sleep 30", envs={"K": "V"}, cwd="/tmp"), "tag": "sleeper"}
    with rpc.open_stream(START, request) as stream:
        pid = stream.next()[1]["event"]["start"]["pid"]
        listed = rpc.unary("process.Process/List", {}).json()["processes"]
        mine = [p for p in listed if p["pid"] == pid]
        assert mine == [
            {
                "pid": pid,
                "tag": "sleeper",
                "config": {"cmd": "/bin/sh", "args": ["-c", "sleep 30"], "envs": {"K": "V"}, "cwd": "/tmp"},
            }
        ]
        rpc.unary("process.Process/SendSignal", {"process": {"tag": "sleeper"}, "signal": "SIGNAL_SIGKILL"})
        stream.until_end()
    assert all(p["pid"] != pid for p in rpc.unary("process.Process/List", {}).json().get("processes", []))


def test_process_survives_client_disconnect_and_connect_replays_output(rpc: Connect, envd_server: str) -> None:
    script = "echo before; read line; echo after $line"
    with rpc.open_stream(START, {**sh(script), "tag": "durable"}) as stream:
        pid = stream.next()[1]["event"]["start"]["pid"]
        assert base64.b64decode(stream.next()[1]["event"]["data"]["stdout"]) == b"before\n"
    # the first client is gone; the process is still running
    assert any(p["pid"] == pid for p in rpc.unary("process.Process/List", {}).json()["processes"])
    with (
        _connect(envd_server) as second,
        second.open_stream("process.Process/Connect", {"process": {"tag": "durable"}}) as stream,
    ):
        assert stream.next()[1] == {"event": {"start": {"pid": pid}}}
        replayed = stream.next()[1]
        assert base64.b64decode(replayed["event"]["data"]["stdout"]) == b"before\n"
        second.unary("process.Process/SendInput", {"process": {"pid": pid}, "input": {"stdin": "eAo="}})
        rest = stream.until_end()
    assert output(rest) == b"after x\n"
    assert end_event(rest)["status"] == "exit status 0"


class _connect:  # noqa: N801 - tiny context manager around the test client
    def __init__(self, url: str) -> None:
        self.client = Connect(url)

    def __enter__(self) -> Connect:
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close()


def test_exited_process_end_event_is_kept(rpc: Connect) -> None:
    messages = rpc.stream(START, sh("echo gone; exit 4"))
    pid = messages[0]["event"]["start"]["pid"]
    replay = rpc.stream("process.Process/Connect", {"process": {"pid": pid}})
    assert replay[0] == {"event": {"start": {"pid": pid}}}
    assert output(replay) == b"gone\n"
    assert end_event(replay)["exitCode"] == 4


def test_exited_process_is_forgotten_after_retention(envd_factory: Callable[..., EnvdProcess]) -> None:
    envd = envd_factory("--exited-retention", "0.3")
    with _connect(envd.url) as client:
        pid = client.stream(START, sh("true"))[0]["event"]["start"]["pid"]
        assert client.stream("process.Process/Connect", {"process": {"pid": pid}})[-1] == ("end", {})

        def forgotten() -> bool:
            result = client.stream("process.Process/Connect", {"process": {"pid": pid}})
            return "error" in result[-1][1]

        wait_for(forgotten)


def test_start_timeout_is_process_lifetime(rpc: Connect) -> None:
    started = time.monotonic()
    messages = rpc.stream(START, sh("sleep 30"), headers={"Connect-Timeout-Ms": "300"})
    assert time.monotonic() - started < 10
    assert end_event(messages)["status"] == "signal: killed"
    assert messages[-1] == ("end", {})


def test_keepalive_events_follow_the_header(rpc: Connect) -> None:
    messages = rpc.stream(START, sh("sleep 1.2; echo x"), headers={"Keepalive-Ping-Interval": "0.3"})
    keepalives = [m for m in messages if isinstance(m, dict) and "keepalive" in m["event"]]
    assert len(keepalives) >= 2
    assert keepalives[0] == {"event": {"keepalive": {}}}
    assert output(messages) == b"x\n"


def test_connect_stream_honours_its_deadline(rpc: Connect) -> None:
    with rpc.open_stream(START, sh("sleep 30")) as stream:
        pid = stream.next()[1]["event"]["start"]["pid"]
        attached = rpc.stream(
            "process.Process/Connect", {"process": {"pid": pid}}, headers={"Connect-Timeout-Ms": "200"}
        )
        assert attached[-1] == ("end", {"error": {"code": "deadline_exceeded", "message": "deadline exceeded"}})
        # the process is unaffected by the attached stream's deadline
        assert any(p["pid"] == pid for p in rpc.unary("process.Process/List", {}).json()["processes"])
        rpc.unary("process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
        stream.until_end()


def test_pty_output_input_and_resize(rpc: Connect) -> None:
    request = {
        "process": {"cmd": "/bin/bash", "args": ["--norc", "--noprofile", "-i"], "envs": {"PS1": "$ ", "TERM": "dumb"}},
        "pty": {"size": {"cols": 100, "rows": 30}},
    }
    with rpc.open_stream(START, request, headers=basic("root")) as stream:
        pid = stream.next()[1]["event"]["start"]["pid"]

        def send(text: str) -> None:
            body = {"process": {"pid": pid}, "input": {"pty": base64.b64encode(text.encode()).decode()}}
            assert rpc.unary("process.Process/SendInput", body).status_code == 200

        def read_until(marker: bytes) -> bytes:
            seen = b""
            while marker not in seen:
                flags, msg = stream.next()
                assert not flags & 2, msg
                seen += base64.b64decode(msg["event"].get("data", {}).get("pty", ""))
            return seen

        send('stty size; tty; echo MA""RK1\n')
        first = read_until(b"MARK1\r\n")
        assert b"30 100" in first
        assert b"/dev/pts/" in first
        resize = {"process": {"pid": pid}, "pty": {"size": {"cols": 120, "rows": 40}}}
        assert rpc.unary("process.Process/Update", resize).status_code == 200
        send('stty size; echo MA""RK2\n')
        assert b"40 120" in read_until(b"MARK2\r\n")
        rpc.unary("process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
        end = end_event(stream.until_end())
    assert end["status"] == "signal: killed"


def test_update_without_pty_is_failed_precondition(rpc: Connect) -> None:
    with rpc.open_stream(START, sh("sleep 5")) as stream:
        pid = stream.next()[1]["event"]["start"]["pid"]
        response = rpc.unary(
            "process.Process/Update", {"process": {"pid": pid}, "pty": {"size": {"cols": 1, "rows": 1}}}
        )
        assert response.json()["code"] == "failed_precondition"
        rpc.unary("process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
        stream.until_end()


def test_stream_input_client_stream(rpc: Connect) -> None:
    with rpc.open_stream(START, sh("cat")) as stream:
        pid = stream.next()[1]["event"]["start"]["pid"]

        def body() -> Any:
            yield envelope({"start": {"process": {"pid": pid}}})
            yield envelope({"keepalive": {}})
            yield envelope({"data": {"input": {"stdin": base64.b64encode(b"one ").decode()}}})
            yield envelope({"data": {"input": {"stdin": base64.b64encode(b"two").decode()}}})

        response = rpc.http.post(
            "/process.Process/StreamInput",
            content=body(),
            headers={"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"},
        )
        assert response.status_code == 200
        assert parse_envelopes(response.content) == [(0, {}), (2, {})]
        rpc.unary("process.Process/CloseStdin", {"process": {"pid": pid}})
        assert output(stream.until_end()) == b"one two"


def test_stream_input_unknown_pid(rpc: Connect) -> None:
    response = rpc.http.post(
        "/process.Process/StreamInput",
        content=envelope({"start": {"process": {"pid": 999999}}}),
        headers={"Content-Type": "application/connect+json"},
    )
    assert parse_envelopes(response.content)[-1] == (
        2,
        {"error": {"code": "not_found", "message": "process with pid 999999 not found"}},
    )


def test_proto_codec_start(rpc: Connect) -> None:
    from wrenn.envd._proto import process as pb

    request = pb.StartRequest(process=pb.ProcessConfig(cmd="/bin/echo", args=["proto"]))
    data = request.SerializeToString()
    response = rpc.http.post(
        "/process.Process/Start",
        content=struct.pack(">BI", 0, len(data)) + data,
        headers={"Content-Type": "application/connect+proto"},
    )
    assert response.headers["content-type"] == "application/connect+proto"
    body = response.content
    events = []
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        if flags & 2:
            assert json.loads(body[5 : 5 + length]) == {}
        else:
            events.append(pb.StartResponse.FromString(body[5 : 5 + length]).event)
        body = body[5 + length :]
    assert events[0].WhichOneof("event") == "start"
    assert b"".join(e.data.stdout for e in events) == b"proto\n"
    assert events[-1].end.exited


def test_proto_codec_unary_list(rpc: Connect) -> None:
    from wrenn.envd._proto import process as pb

    response = rpc.http.post("/process.Process/List", content=b"", headers={"Content-Type": "application/proto"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/proto"
    assert isinstance(pb.ListResponse.FromString(response.content).processes, object)


def test_large_output_arrives_complete(rpc: Connect) -> None:
    messages = rpc.stream(START, sh("head -c 3000000 /dev/zero | tr '\\0' a; echo; echo done >&2"))
    out = output(messages)
    assert len(out) == 3_000_001
    assert out.count(b"a") == 3_000_000
    assert output(messages, "stderr") == b"done\n"


def test_replayed_output_is_bounded_and_recent(rpc: Connect) -> None:
    script = "head -c 3000000 /dev/zero | tr '\\0' a; echo; echo END; read x"
    with rpc.open_stream(START, {**sh(script), "tag": "big"}) as stream:
        pid = stream.next()[1]["event"]["start"]["pid"]
        seen = b""
        while not seen.endswith(b"END\n"):
            seen += base64.b64decode(stream.next()[1]["event"]["data"]["stdout"])
    with rpc.open_stream("process.Process/Connect", {"process": {"pid": pid}}) as attached:
        attached.next()  # start
        rpc.unary("process.Process/CloseStdin", {"process": {"pid": pid}})
        replay = attached.until_end()
    replayed = output(replay)
    assert replayed.endswith(b"a\nEND\n")
    assert 900_000 < len(replayed) <= 1024 * 1024 + 64 * 1024  # the last ~1 MiB (ring of 64 KiB reads), not 3 MB


def test_unary_deadline_on_blocked_input(rpc: Connect) -> None:
    with rpc.open_stream(START, sh("sleep 30")) as stream:  # never reads its stdin: the pipe fills up
        pid = stream.next()[1]["event"]["start"]["pid"]
        big = base64.b64encode(b"x" * (1024 * 1024)).decode()
        response = rpc.unary(
            "process.Process/SendInput",
            {"process": {"pid": pid}, "input": {"stdin": big}},
            headers={"Connect-Timeout-Ms": "300"},
        )
        assert response.status_code == 504
        assert response.json()["code"] == "deadline_exceeded"
        # envd is still responsive and the process still alive
        assert any(p["pid"] == pid for p in rpc.unary("process.Process/List", {}).json()["processes"])
        rpc.unary("process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"})
        stream.until_end()


def test_stopping_envd_kills_its_processes(envd_factory: Callable[..., EnvdProcess]) -> None:
    envd = envd_factory()
    with _connect(envd.url) as client, client.open_stream(START, sh("sleep 60")) as stream:
        pid = stream.next()[1]["event"]["start"]["pid"]
        assert os.path.exists(f"/proc/{pid}")
    envd.stop()
    assert envd.proc.returncode == 0
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid))


@pytest.mark.root
def test_non_root_envd_runs_as_itself_and_refuses_other_users(os_user: str) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop privileges")
    entry = pwd.getpwnam(os_user)
    with tempfile.TemporaryDirectory(prefix="envd-nonroot-") as tmp:
        os.chmod(tmp, 0o777)
        port_file = Path(tmp) / "port"
        drop = [setpriv, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
        cmd = [*drop, sys.executable, "-m", "wrenn.envd", "--host", "127.0.0.1", "--port", "0"]
        with subprocess.Popen([*cmd, "--port-file", str(port_file)]) as proc:
            try:
                wait_for(lambda: port_file.exists() or proc.poll() is not None)
                assert proc.poll() is None
                with _connect(f"http://127.0.0.1:{port_file.read_text()}") as client:
                    assert output(client.stream(START, sh("id -un"))) == b"user\n"
                    denied = client.stream(START, sh("id -un"), headers=basic("root"))
                    assert denied[0][1]["error"]["code"] == "permission_denied"
            finally:
                proc.terminate()


def test_end_event_does_not_wait_for_descendants_holding_the_output(rpc: Connect) -> None:
    started = time.monotonic()
    messages = rpc.stream(START, sh("(yes > /dev/stdout &) ; echo leader-done"))
    assert time.monotonic() - started < 10
    assert end_event(messages)["status"] == "exit status 0"
    assert b"leader-done\n" in output(messages)
    # the orphaned writer is still in the process group this test started; end it
    with contextlib.suppress(ProcessLookupError):
        os.killpg(messages[0]["event"]["start"]["pid"], signal.SIGKILL)
