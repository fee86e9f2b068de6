"""`wrenn provision ca …` (the internal CA, idempotent for Ansible) and `wrenn provision host …` (SSH onboarding).

The CA commands print one word first — ``created``/``exists``, ``issued``/``valid``, ``revoked`` — so that the
``ca`` role can report Ansible's ok/changed honestly.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("provision", help="internal CA and host onboarding")
    commands = parser.add_subparsers(dest="provision_command", metavar="COMMAND")

    def _help(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=_help)
    _register_ca(commands)
    _register_host(commands)


def _register_ca(commands: Any) -> None:
    ca: argparse.ArgumentParser = commands.add_parser("ca", help="the internal certificate authority")
    ca_commands = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)

    init = ca_commands.add_parser("init", help="create the CA in --dir unless it exists")
    init.add_argument("--dir", type=Path, required=True)
    init.set_defaults(handler=_ca_init)

    for name, helptext in (("issue-host", "host (agent) certificate"), ("issue-client", "API client certificate")):
        issue = ca_commands.add_parser(name, help=f"issue a {helptext} unless a valid one is in place")
        issue.add_argument("--dir", type=Path, required=True, help="the CA directory")
        issue.add_argument("--name", required=True, help="common name")
        issue.add_argument("--cert", type=Path, required=True)
        issue.add_argument("--key", type=Path, required=True)
        if name == "issue-host":
            issue.add_argument("--ip", action="append", default=[], help="IP SAN (repeatable)")
            issue.add_argument("--dns", action="append", default=[], help="DNS SAN (repeatable)")
        issue.add_argument("--force", action="store_true", help="issue even when the current one is valid")
        issue.set_defaults(handler=_ca_issue, client=(name == "issue-client"))

    revoke = ca_commands.add_parser("revoke", help="revoke a certificate (file or hex serial) and re-sign the CRL")
    revoke.add_argument("--dir", type=Path, required=True)
    revoke.add_argument("certificate", help="PEM file or serial number in hex")
    revoke.set_defaults(handler=_ca_revoke)


def _register_host(commands: Any) -> None:
    host: argparse.ArgumentParser = commands.add_parser(
        "host", help="onboard a host over SSH: check its facts, run onboard-host.yml, wait until its agent reports in"
    )
    host.add_argument("target", help="user@address[:port] of the host")
    host.add_argument("--api-url", required=True, help="control plane URL the agent registers with")
    host.add_argument("--token", required=True, help="one-time registration token (POST /v1/hosts/tokens)")
    host.add_argument("--identity", "-i", type=Path, help="SSH private key")
    host.add_argument("--known-hosts", type=Path, help="known_hosts file (default: accept and record a new host key)")
    host.add_argument("--name", help="host name to register (default: the remote hostname)")
    host.add_argument("--agent-listen", default="0.0.0.0:5007", help="host:port the agent listens on")
    host.add_argument("--advertise-url", help="URL the control plane reaches the agent at (default from address)")
    host.add_argument("--admin-token", help="API admin token, to wait until the host is listed (GET /v1/hosts)")
    host.add_argument(
        "--extra-var", "-e", action="append", default=[], help="extra ansible variable: key=value or a JSON object"
    )
    host.add_argument("--check-only", action="store_true", help="only check the remote facts")
    host.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the agent to report in")
    host.set_defaults(handler=_host)


def _ca_init(args: argparse.Namespace) -> int:
    from wrenn.provision.ca import CAError, CertificateAuthority

    try:
        CertificateAuthority.load(args.dir)
        print(f"exists {args.dir}")
        return 0
    except CAError:
        pass
    try:
        CertificateAuthority.create(args.dir)
    except CAError as exc:
        print(f"wrenn provision ca init: {exc}", file=sys.stderr)
        return 1
    print(f"created {args.dir}")
    return 0


def _ca_issue(args: argparse.Namespace) -> int:
    from wrenn.provision.ca import CAError, CertificateAuthority, needs_renewal

    try:
        ca = CertificateAuthority.load(args.dir)
        if not args.force and _still_valid(ca, args.cert, args.key, needs_renewal, getattr(args, "ip", []), args.name):
            print(f"valid {args.cert}")
            return 0
        if args.client:
            issued = ca.issue_client(args.name)
        else:
            issued = ca.issue_host(args.name, ip_addresses=args.ip, dns_names=args.dns)
        issued.write(args.cert, args.key)
    except CAError as exc:
        print(f"wrenn provision ca: {exc}", file=sys.stderr)
        return 1
    print(f"issued {args.cert} serial={issued.serial:x} not_after={issued.not_after.isoformat()}")
    return 0


def _still_valid(ca: Any, cert: Path, key: Path, needs_renewal: Any, ips: list[str], name: str) -> bool:
    """An existing certificate is kept when this CA signed it, it is not due, not revoked and names what we asked."""
    import ipaddress

    from cryptography import x509

    from wrenn.provision.ca import CAError

    if not cert.exists() or not key.exists():
        return False
    pem = cert.read_text()
    try:
        parsed = ca.verify(pem)
    except CAError:
        return False
    if needs_renewal(pem, now=datetime.now(UTC)) or ca.is_revoked(parsed.serial_number):
        return False
    if parsed.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value != name:
        return False
    if ips:
        try:
            san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        if set(san.get_values_for_type(x509.IPAddress)) != {ipaddress.ip_address(i) for i in ips}:
            return False
    return True


def _ca_revoke(args: argparse.Namespace) -> int:
    from cryptography import x509

    from wrenn.provision.ca import CAError, CertificateAuthority

    try:
        ca = CertificateAuthority.load(args.dir)
        path = Path(args.certificate)
        if path.exists():
            serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
        else:
            serial = int(args.certificate, 16)
        ca.revoke(serial)
    except (CAError, ValueError) as exc:
        print(f"wrenn provision ca revoke: {exc}", file=sys.stderr)
        return 1
    print(f"revoked {serial:x}")
    return 0


def _host(args: argparse.Namespace) -> int:
    from wrenn.provision import ProvisionError
    from wrenn.provision.onboard import OnboardOptions, onboard_host

    extra: dict[str, object] = {}
    for item in args.extra_var:
        if item.lstrip().startswith("{"):
            try:
                extra |= json.loads(item)
            except ValueError as exc:
                print(f"wrenn provision host: --extra-var is not a JSON object: {exc}", file=sys.stderr)
                return 2
            continue
        key, sep, value = item.partition("=")
        if not sep:
            print(f"wrenn provision host: --extra-var wants key=value, got {item!r}", file=sys.stderr)
            return 2
        extra[key] = value
    options = OnboardOptions(
        target=args.target,
        api_url=args.api_url,
        token=args.token,
        identity=args.identity,
        known_hosts=args.known_hosts,
        name=args.name,
        agent_listen=args.agent_listen,
        advertise_url=args.advertise_url,
        admin_token=args.admin_token,
        extra_vars=extra,
        check_only=args.check_only,
        timeout_s=args.timeout,
    )
    try:
        result = onboard_host(options, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except ProvisionError as exc:
        print(f"wrenn provision host: {exc}", file=sys.stderr)
        return 1
    print(result.model_dump_json(indent=2))
    return 0
