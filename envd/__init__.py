"""envd, the guest agent: E2B-compatible process and filesystem services inside every sandbox VM.

Runs on the guest's own Debian python3 with the standard library plus an explicit allow-list of packages
(google.protobuf, h11); it never imports the rest of Wrenn and uses only relative imports, because the image copies
this folder into the guest under another package name.

Modules: `_http` (HTTP/1.1 server, router, token check), `_connect` (Connect protocol), `_proto` (message classes),
`_process` (process.Process), `_users` (users, env), `_state` (/init state), `_system` (/health /init /envs
/metrics), `_filesystem` + `_files` + `_paths` (filesystem service and /files), `_app` (the factory below).
"""

from ._app import Envd, create_server
from ._state import Settings, State

__all__ = ["Envd", "Settings", "State", "create_server"]
