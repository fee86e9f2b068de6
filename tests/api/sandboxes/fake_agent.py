"""A test double of the host agent: the real agent HTTP API (protocol/agent.py) served by Falcon, where each
"sandbox" is a real envd process on the host (``python -m wrenn.envd``) instead of a microVM.

It lets the control-plane tests run the real API, proxy, database and e2b SDK without booting VMs; the e2e tests
in tests/e2e use the real agent and real VMs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi
import httpx

from wrenn.protocol.agent import Accelerator, CreateSandbox, HostInfo, SandboxInfo, SandboxList, SandboxState


class _Sandbox:
    def __init__(self, spec: CreateSandbox, proc: subprocess.Popen[bytes], port: int) -> None:
        self.spec = spec
        self.proc = proc
        self.port = port
        self.created_at = datetime.now(UTC)
        self.paused = False

    def info(self) -> SandboxInfo:
        state = SandboxState.RUNNING if self.proc.poll() is None else SandboxState.STOPPED
        if self.paused and state is SandboxState.RUNNING:
            state = SandboxState.PAUSED
        return SandboxInfo(
            sandbox_id=self.spec.sandbox_id,
            template=self.spec.template,
            state=state,
            vcpus=self.spec.vcpus,
            memory_mb=self.spec.memory_mb,
            disk_mb=self.spec.disk_mb,
            metadata=self.spec.metadata,
            created_at=self.created_at,
            envd_address=f"127.0.0.1:{self.port}",
            allow_internet=self.spec.allow_internet,
            accelerator=Accelerator.TCG,
        )


class FakeAgent:
    """State of the double; `app()` is its ASGI app. `fail_next_create` makes the next create answer 503."""

    def __init__(self, *, shared_envd: bool = False) -> None:
        """``shared_envd``: every sandbox is the same long-lived envd (no access token), so a create costs next to
        nothing and benchmarks see the control plane alone."""
        self.shared_envd = shared_envd
        self._shared: tuple[subprocess.Popen[bytes], int] | None = None
        self.sandboxes: dict[str, _Sandbox] = {}
        self.keep_envd_on_destroy = False  # destroy leaves envd running: only the proxy can cut streams then
        self._kept: list[subprocess.Popen[bytes]] = []
        self.fail_next_create = False
        self.creates = 0
        # pause = SIGSTOP of the sandbox's envd (it stops answering, like a paused VM), resume = SIGCONT
        self.pauses = 0
        self.resumes = 0
        self.resume_delay_s = 0.0
        self.fail_next_resume = False
        self._tmp = tempfile.TemporaryDirectory(prefix="wrenn-fake-agent-")

    def host_info(self) -> HostInfo:
        return HostInfo(
            host_id="",
            version="fake",
            accelerator=Accelerator.TCG,
            cgroup_version=1,
            cow_backend="none",
            vcpus_total=64,
            vcpus_used=len(self.sandboxes),
            memory_mb_total=65536,
            memory_mb_used=512 * len(self.sandboxes),
            disk_mb_free=100000,
            sandboxes_running=len(self.sandboxes),
        )

    async def create(self, spec: CreateSandbox) -> SandboxInfo:
        self.creates += 1
        if self.shared_envd:
            if self._shared is None:
                proc, port = await self._start_envd(spec.model_copy(update={"envd_access_token": None}))
                self._shared = (proc, port)
            sandbox = _Sandbox(spec, self._shared[0], self._shared[1])
            self.sandboxes[spec.sandbox_id] = sandbox
            return sandbox.info()
        proc, port = await self._start_envd(spec)
        sandbox = _Sandbox(spec, proc, port)
        self.sandboxes[spec.sandbox_id] = sandbox
        return sandbox.info()

    async def _start_envd(self, spec: CreateSandbox) -> tuple[subprocess.Popen[bytes], int]:
        port_file = Path(self._tmp.name) / f"{spec.sandbox_id}.port"
        cmd = [sys.executable, "-m", "wrenn.envd", "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file)]
        if spec.envd_access_token:
            cmd += ["--access-token", spec.envd_access_token]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
        try:
            async with asyncio.timeout(30):
                while not port_file.exists():  # polling envd's port file
                    if proc.poll() is not None:
                        raise RuntimeError("envd exited")
                    await asyncio.sleep(0.02)
                port = int(port_file.read_text())
                async with httpx.AsyncClient() as client:
                    while (await client.get(f"http://127.0.0.1:{port}/health")).status_code != 204:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
                    if spec.env_vars:
                        headers = {"X-Access-Token": spec.envd_access_token} if spec.envd_access_token else {}
                        await client.post(
                            f"http://127.0.0.1:{port}/init", json={"envVars": spec.env_vars}, headers=headers
                        )
        except BaseException:
            _stop(proc)
            raise
        return proc, port

    def pause(self, sandbox_id: str) -> SandboxInfo | None:
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None or sandbox.paused:
            return None
        self.pauses += 1
        sandbox.proc.send_signal(signal.SIGSTOP)
        sandbox.paused = True
        return sandbox.info()

    async def resume(self, sandbox_id: str) -> SandboxInfo | None:
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            return None
        if not sandbox.paused:
            return sandbox.info()
        self.resumes += 1
        if self.resume_delay_s:
            await asyncio.sleep(self.resume_delay_s)  # a restore that takes this long
        if self.fail_next_resume:
            self.fail_next_resume = False
            raise RuntimeError("restore failed")
        sandbox.proc.send_signal(signal.SIGCONT)
        sandbox.paused = False
        return sandbox.info()

    def destroy(self, sandbox_id: str) -> bool:
        sandbox = self.sandboxes.pop(sandbox_id, None)
        if sandbox is None:
            return False
        if sandbox.paused:
            sandbox.proc.send_signal(signal.SIGCONT)
        if self.keep_envd_on_destroy:
            self._kept.append(sandbox.proc)
        elif not self.shared_envd:
            _stop(sandbox.proc)
        return True

    def close(self) -> None:
        for sandbox_id in list(self.sandboxes):
            self.destroy(sandbox_id)
        for proc in self._kept:
            _stop(proc)
        if self._shared is not None:
            _stop(self._shared[0])
            self._shared = None
        self._tmp.cleanup()

    def app(self) -> falcon.asgi.App[Any, Any]:
        agent = self

        def send(resp: falcon.asgi.Response, status: int, body: Any) -> None:
            resp.status = status
            resp.content_type = falcon.MEDIA_JSON
            resp.text = json.dumps(body)

        class Health:
            async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
                send(resp, 200, agent.host_info().model_dump(mode="json"))

        class Sandboxes:
            async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
                listed = SandboxList(sandboxes=[s.info() for s in agent.sandboxes.values()])
                send(resp, 200, listed.model_dump(mode="json"))

            async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
                spec = CreateSandbox.model_validate(await req.get_media())
                if agent.fail_next_create:
                    agent.fail_next_create = False
                    send(resp, 503, {"code": 503, "message": "VMM failed to start"})
                    return
                send(resp, 201, (await agent.create(spec)).model_dump(mode="json"))

        class Sandbox:
            async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str) -> None:
                sandbox = agent.sandboxes.get(sandbox_id)
                if sandbox is None:
                    send(resp, 404, {"code": 404, "message": "no such sandbox"})
                    return
                send(resp, 200, sandbox.info().model_dump(mode="json"))

            async def on_delete(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str) -> None:
                agent.destroy(sandbox_id)
                resp.status = 204

        class Pause:
            async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str) -> None:
                if sandbox_id not in agent.sandboxes:
                    send(resp, 404, {"code": 404, "message": "no such sandbox"})
                    return
                info = agent.pause(sandbox_id)
                if info is None:
                    send(resp, 409, {"code": 409, "message": "already paused"})
                    return
                send(resp, 200, info.model_dump(mode="json"))

        class Resume:
            async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str) -> None:
                try:
                    info = await agent.resume(sandbox_id)
                except RuntimeError as exc:
                    send(resp, 503, {"code": 503, "message": str(exc)})
                    return
                if info is None:
                    send(resp, 404, {"code": 404, "message": "no such sandbox"})
                    return
                send(resp, 201, info.model_dump(mode="json"))

        app: falcon.asgi.App[Any, Any] = falcon.asgi.App()
        app.add_route("/v1/health", Health())
        app.add_route("/v1/sandboxes", Sandboxes())
        app.add_route("/v1/sandboxes/{sandbox_id}", Sandbox())
        app.add_route("/v1/sandboxes/{sandbox_id}/pause", Pause())
        app.add_route("/v1/sandboxes/{sandbox_id}/resume", Resume())
        return app


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
