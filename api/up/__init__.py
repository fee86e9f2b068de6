"""Single-node Wrenn (`wrenn up`): control plane, sandbox proxy and host agent in one process, with a private
PostgreSQL cluster when no database URL is configured."""

from wrenn.api.up._postgres import PrivateCluster, find_bindir
from wrenn.api.up._runner import CONNECTION_FILE, UpOptions, connection_lines, run_up

__all__ = ["CONNECTION_FILE", "PrivateCluster", "UpOptions", "connection_lines", "find_bindir", "run_up"]
