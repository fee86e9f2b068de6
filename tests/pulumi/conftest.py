"""Pulumi's mocks for the fleet program: every resource the program registers is recorded with its inputs.

Instances get addresses from the documentation ranges (``203.0.113.x`` public, ``10.42.1.x`` private), the AMI
lookup answers a fixed id, buckets get their name from the prefix — enough for the outputs to resolve.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import pulumi
import pytest

pytest.importorskip("pulumi_aws", reason="the provision extra (pulumi, pulumi-aws) is not installed")


@dataclass
class Recorded:
    typ: str
    name: str
    inputs: dict[str, Any]


@dataclass
class FleetMocks(pulumi.runtime.Mocks):
    resources: list[Recorded] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.resources.append(Recorded(args.typ, args.name, dict(args.inputs)))
        outputs = dict(args.inputs)
        if args.typ == "aws:ec2/instance:Instance":
            # Registration order is not deterministic (async RPCs): derive the address from the name (<fleet>-host-<i>).
            n = int(args.name.rsplit("-", 1)[1]) + 1
            outputs |= {"publicIp": f"203.0.113.{n}", "privateIp": f"10.42.1.{10 + n}"}
        elif args.typ == "aws:s3/bucket:Bucket":
            outputs["bucket"] = f"{args.inputs['bucketPrefix']}0001"
        elif args.typ == "aws:route53/record:Record":
            outputs["fqdn"] = args.inputs["name"]
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        self.calls.append(args.token)
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0debian12", "name": "debian-12-amd64-20260101"}, []
        return {}, []

    def of_type(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.typ == typ]


_F = TypeVar("_F", bound=Callable[..., Any])

# `pulumi.runtime.test` runs the test's outputs to completion; it is untyped, this alias keeps mypy --strict quiet.
pulumi_test = cast(Callable[[_F], _F], pulumi.runtime.test)


@pytest.fixture
def mocks() -> Iterator[FleetMocks]:
    # Pulumi's runtime drives outputs on `asyncio.get_event_loop()` (after pytest-asyncio's tests none is set in the
    # main thread) and answers mock RPCs on the loop's default executor, where it makes one more loop per worker
    # thread. The test owns all of them: its own loop, an executor whose threads start with a loop the test keeps,
    # and closes every one afterwards (warnings are errors: an unclosed loop fails the run).
    loop = asyncio.new_event_loop()
    thread_loops: list[asyncio.AbstractEventLoop] = []
    lock = threading.Lock()

    def give_thread_a_loop() -> None:
        thread_loop = asyncio.new_event_loop()
        asyncio.set_event_loop(thread_loop)
        with lock:
            thread_loops.append(thread_loop)

    executor = ThreadPoolExecutor(max_workers=4, initializer=give_thread_a_loop)
    loop.set_default_executor(executor)
    asyncio.set_event_loop(loop)
    try:
        m = FleetMocks()
        pulumi.runtime.set_mocks(m, project="wrenn-fleet", stack="test", preview=False)
        yield m
    finally:
        asyncio.set_event_loop(None)
        executor.shutdown(wait=True)
        loop.close()
        for thread_loop in thread_loops:
            thread_loop.close()
