"""The `connectproxy` command line (docs/operations.md, "Commands and exit codes").

Every user mistake ends here as one clear line on stderr and exit status 2, never a traceback.

Each command imports what it needs when it runs: `explain` answers an operator (or a script) in a
few tens of milliseconds on a config of 10,000 domain patterns, and importing the server,
uvloop, prometheus-client, structlog and doctor's network code would cost more than that alone.
tests/unit/process/test_cli_imports.py holds `explain` and `check-config` to it.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from connectproxy import __version__, compiled
from connectproxy.configfile.errors import ConfigError
from connectproxy.configfile.load import config_from_mapping, load_config

if TYPE_CHECKING:
    from typing import TypeAlias

    from connectproxy.config.model import Config

    _SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


class UsageError(Exception):
    """A command-line mistake: printed and exit 2."""


def _config_loader(args: argparse.Namespace) -> Callable[[], Config]:
    squid = getattr(args, "squid_conf", None)
    if squid is not None:
        path = Path(squid)

        def load_squid() -> Config:
            from connectproxy.configfile.squid.parse import SquidConfError
            from connectproxy.configfile.squid.report import SquidImportError
            from connectproxy.configfile.squid.translate import translate_file

            try:
                translation = translate_file(path)
            except (SquidImportError, SquidConfError, OSError) as exc:
                raise ConfigError(str(path), None, None, _without_prefix(str(exc), path)) from None
            config = config_from_mapping(translation.mapping, str(path), path.parent)
            return _with_warnings(config, translation.warnings)

        return load_squid
    config_path = Path(args.config) if args.config else None
    return lambda: load_config(config_path)


def _without_prefix(message: str, path: Path) -> str:
    """Squid errors already start with the file name; say it once."""
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _with_warnings(config: Config, warnings: Sequence[str]) -> Config:
    from connectproxy.config.frozen import replace

    return replace(config, warnings=(*config.warnings, *warnings))


def cmd_run(args: argparse.Namespace) -> int:
    # The console script starts with the cyclic collector off, for the commands that answer and
    # exit (process/entry.py); a server runs for months and needs it.
    gc.enable()
    # Host name lookups run on libuv's thread pool, 4 threads by default: a few lookups a silent
    # resolver never answers would hold every thread and stall all other lookups.
    os.environ.setdefault("UV_THREADPOOL_SIZE", "128")
    import uvloop

    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.workers > 1:
        # Before anything imports prometheus-client: it picks its value storage at import.
        if "prometheus_client" in sys.modules:
            raise RuntimeError("prometheus_client was imported before --workers could set it up")
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="connectproxy-metrics-")
    from connectproxy.process import workers
    from connectproxy.process.app import Role, serve

    load = _config_loader(args)
    config = load()
    if args.workers > 1:
        child_args = ["run", *_config_args(args)]
        return uvloop.run(workers.supervise(config, load, args.workers, child_args))
    role = workers.worker_role_from_env() or Role()
    return uvloop.run(serve(config, load, role=role))


def _config_args(args: argparse.Namespace) -> list[str]:
    if getattr(args, "squid_conf", None):
        return ["--squid-conf", str(Path(args.squid_conf).resolve())]
    if args.config:
        return ["--config", str(Path(args.config).resolve())]
    return []


def cmd_check_config(args: argparse.Namespace) -> int:
    from connectproxy.configfile.summary import summarize

    config = _config_loader(args)()
    print(f"{config.source}: valid")
    for warning in config.warnings:
        print(f"warning: {warning}")
    for line in summarize(config):
        print(line)
    return 0


def _guard_terms(mode: str, host: str, ip_literal: bool) -> str:
    """What the TLS guard (SPEC 5.1) will ask of the tunnel's first bytes, after the 200."""
    if mode == "observe":
        return "the tunnel's ClientHello is logged, never refused"
    if mode == "require":
        return "the tunnel must start with a TLS ClientHello, else it is closed"
    if ip_literal:
        return "the tunnel must start with a TLS ClientHello without a server_name"
    return f"the tunnel must start with a TLS ClientHello whose server_name is {host}"


def cmd_explain(args: argparse.Namespace) -> int:
    import ipaddress

    from connectproxy.policy.decide import Credentials, Source, decide, usable_addresses
    from connectproxy.wire.http import RequestError, parse_target

    config = _config_loader(args)()
    try:
        target = parse_target(args.target)
    except RequestError as exc:
        print(f"deny: {exc.status} {exc.reason}")
        return 1
    try:
        source_addr = ipaddress.ip_address(args.source)
    except ValueError:
        raise UsageError(f"--source {args.source!r} is not an IP address") from None
    credentials = Credentials(args.user, valid=True) if args.user else None
    if credentials is not None and not config.checks_credentials:
        print(
            "note: no users and no htpasswd_file are configured, so the proxy ignores "
            "credentials: --user changes nothing",
            file=sys.stderr,
        )
    decision = decide(target, Source(source_addr, 0), credentials, config)
    who = decision.client or "-"
    if not decision.allowed:
        print(f"deny: {decision.status} {decision.reason} (client {who})")
        return 1
    verdict = "allow (report mode: enforce would deny)" if decision.would_deny else "allow"
    print(f"{verdict}: {decision.reason} by policy {decision.policy} (client {who})")
    guard = config.policies[decision.policy].tls if decision.policy is not None else "off"
    if guard != "off":
        print(f"tls: {guard}: {_guard_terms(guard, target.host, target.ip is not None)}")
    if decision.route == "upstream":
        assert config.upstream is not None
        names = ", ".join(p.name for p in config.upstream.proxies)
        print(f"route: upstream ({config.upstream.strategy}: {names}); the upstream resolves")
        return 0
    static = [target.ip] if target.ip is not None else config.destinations.lookup_host(target.host)
    if static is None:
        print("route: direct; addresses come from DNS at connect time and are checked then")
        return 0
    usable = usable_addresses(list(static), config)
    if not usable:
        print("deny: 403 every address is in destinations.deny_networks")
        return 1
    print("route: direct to " + ", ".join(str(a) for a in usable))
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from connectproxy.credentials.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise UsageError("the passwords differ")
    else:
        password = sys.stdin.read()
        if password.endswith("\n"):
            password = password[:-1]
            if password.endswith("\r"):
                password = password[:-1]
    if not password:
        raise UsageError("the password is empty")
    print(hash_password(password))
    return 0


def cmd_import_squid(args: argparse.Namespace) -> int:
    from connectproxy.configfile.squid.parse import SquidConfError
    from connectproxy.configfile.squid.report import SquidImportError
    from connectproxy.configfile.squid.translate import translate_file

    path = Path(args.file)
    try:
        translation = translate_file(path)
    except (SquidImportError, SquidConfError, OSError) as exc:
        raise UsageError(f"{path}: {_without_prefix(str(exc), path)}") from None
    for warning in translation.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    sys.stdout.write(translation.to_yaml())
    return 0


def _add_config_options(p: argparse.ArgumentParser, squid: bool = True) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config (default: "
        "/etc/connectproxy/connectproxy.yaml if present, else the embedded default)",
    )
    if squid:
        group.add_argument("--squid-conf", metavar="FILE", help="run on an existing squid.conf")


def _add_run(sub: _SubParsers) -> None:
    p = sub.add_parser("run", help="serve until SIGTERM/SIGINT")
    _add_config_options(p)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="serving processes sharing the listeners (default 1; one per core)",
    )
    p.set_defaults(func=cmd_run)


def _add_check_config(sub: _SubParsers) -> None:
    p = sub.add_parser("check-config", help="validate and print the effective policy")
    _add_config_options(p)
    p.set_defaults(func=cmd_check_config)


def _add_explain(sub: _SubParsers) -> None:
    p = sub.add_parser("explain", help="print the decision for a request and why")
    _add_config_options(p, squid=False)
    p.add_argument("--source", required=True, metavar="IP", help="client address")
    p.add_argument("--user", metavar="NAME", help="treat the client as this authenticated user")
    p.add_argument("target", metavar="HOST:PORT")
    p.set_defaults(func=cmd_explain)


def _add_hash_password(sub: _SubParsers) -> None:
    p = sub.add_parser("hash-password", help="hash a password read from stdin")
    p.set_defaults(func=cmd_hash_password)


def _add_import_squid(sub: _SubParsers) -> None:
    p = sub.add_parser("import-squid", help="translate a squid.conf to YAML on stdout")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_import_squid)


def _add_tunnels(sub: _SubParsers) -> None:
    from connectproxy.process.tunnels_cli import add_tunnels_parser

    add_tunnels_parser(sub)


def _add_doctor(sub: _SubParsers) -> None:
    from connectproxy.process.doctor_cli import add_doctor_parser

    add_doctor_parser(sub)


# Each command's parser, in the order `--help` lists them.
_COMMANDS: dict[str, Callable[[_SubParsers], None]] = {
    "run": _add_run,
    "check-config": _add_check_config,
    "explain": _add_explain,
    "hash-password": _add_hash_password,
    "import-squid": _add_import_squid,
    "tunnels": _add_tunnels,
    "doctor": _add_doctor,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with `command` (a key of _COMMANDS) of that one only.

    When the first argument names a command, argparse hands everything after it to that
    command's parser, so the others are never consulted: their usage, help and errors are the
    same whether the rest were built or not. Building all seven cost 4% of explain's
    instructions (and importing tunnels_cli and doctor_cli more), so `main` builds one.
    """
    parser = argparse.ArgumentParser(
        prog="connectproxy",
        description="Forwarding HTTP CONNECT proxy for OT sensors: allowlisted egress only.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"connectproxy {__version__} (compiled: {'yes' if compiled() else 'no'})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add in _COMMANDS.items():
        if command is None or name == command:
            add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    # A known command first: only its parser is needed (anything else, such as --help or a
    # misspelt command, gets the whole parser and its list of commands).
    command = arguments[0] if arguments and arguments[0] in _COMMANDS else None
    args = build_parser(command).parse_args(arguments)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"connectproxy: config error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"connectproxy: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `connectproxy check-config | head`: the reader left; not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
