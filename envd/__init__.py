"""envd, the guest agent: E2B-compatible process and filesystem services inside every sandbox VM.

Runs on the guest's own Debian python3 with the standard library plus an explicit allow-list of pure-Python
packages; it never imports the rest of Wrenn.
"""
