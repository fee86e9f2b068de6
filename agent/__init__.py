"""Wrenn's host agent: runs sandboxes as microVMs on one KVM host (VMM drivers, network, disks, limits, state).

    settings       `AgentSettings` (``WRENN_AGENT_*``) and the factories tests replace
    sandboxes      `SandboxManager`: create/destroy/list, the create step machine, restart recovery
    state          `SandboxRecord`, `StateStore`: per-sandbox state on disk (atomic writes)
    templates      `WarmTemplates`: one snapshot per template shape that creates restore from
    service        `create_agent_app`: the Falcon ASGI API (routes of `wrenn.protocol.agent`)
    registration   `Registration`: register with the control plane once, then heartbeat

docs/agent.md describes the design.
"""

from wrenn.agent._images import AgentImage, BuiltImages, ImageSource, StaticImages
from wrenn.agent._resources import HostFacts, HostResources, NetworkLease
from wrenn.agent._runtime import AgentRuntime
from wrenn.agent.registration import HostIdentity, Registration
from wrenn.agent.sandboxes import Limits, SandboxManager
from wrenn.agent.service import create_agent_app
from wrenn.agent.settings import AgentSettings
from wrenn.agent.state import SandboxRecord, StateStore, Step
from wrenn.agent.templates import WarmSnapshot, WarmTemplates

__all__ = [
    "AgentImage",
    "AgentRuntime",
    "AgentSettings",
    "BuiltImages",
    "HostFacts",
    "HostIdentity",
    "HostResources",
    "ImageSource",
    "Limits",
    "NetworkLease",
    "Registration",
    "SandboxManager",
    "SandboxRecord",
    "StateStore",
    "StaticImages",
    "Step",
    "WarmSnapshot",
    "WarmTemplates",
    "create_agent_app",
]
