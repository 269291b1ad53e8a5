"""The ``otel-gpu`` command: its parser, and ``main``, which installs the signal handlers before
anything heavy is imported and turns every bad setting into exit 2 with one line on stderr."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from otel_gpu._version import __version__
from otel_gpu.config import AGENT_EXPORTERS, ConfigError, thresholds_file

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C

DESCRIPTION = (
    "OpenTelemetry metrics for shared GPU servers: GPUs, MIG devices, the host, and who uses "
    "what. Run a command with --help for its options."
)
AGENT_EPILOG = (
    "Signals: SIGTERM, SIGINT and SIGHUP each stop the agent cleanly: it collects and exports "
    "once more, flushes the exporters and exits 0."
)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line on stderr, exit 2
        sys.stderr.write(f"otel-gpu: {message}\n")
        sys.exit(EXIT_USAGE)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


_SIMULATE_HELP = (
    "use a simulated GPU server: a built-in name (dgx-a100, dgx-h100-mig, h200, "
    "dgx-station-a100) or a scenario file (YAML or JSON)"
)


def _add_common(parser: argparse.ArgumentParser, default_exporter: str) -> None:
    parser.add_argument("--simulate", metavar="SCENARIO", help=_SIMULATE_HELP)
    parser.add_argument(
        "--exporter",
        action="append",
        choices=AGENT_EXPORTERS,
        help=f"where metrics go (repeatable; default {default_exporter}); "
        "OTLP honours the standard OTEL_EXPORTER_OTLP_* variables",
    )
    parser.add_argument(
        "--interval",
        type=_positive,
        default=10.0,
        metavar="SECONDS",
        help="collection interval (default 10; simulated time under --simulate)",
    )
    _add_thresholds(parser)


def _add_thresholds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--thresholds",
        metavar="FILE",
        default=thresholds_file(),
        help="insight thresholds and durations to change (YAML or JSON; see docs/insights.md); "
        "default: $OTEL_GPU_THRESHOLDS",
    )


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="otel-gpu", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"otel-gpu {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    agent = commands.add_parser(
        "agent",
        help="collect every interval and export until SIGTERM, SIGINT or SIGHUP",
        description="Collect every --interval seconds and export until stopped.",
        epilog=AGENT_EPILOG,
    )
    _add_common(agent, "otlp")
    agent.add_argument(
        "--cycles",
        type=_count,
        default=0,
        help="stop after this many cycles (default 0: run until signalled)",
    )
    snap = commands.add_parser(
        "snapshot", help="run the pipeline for --cycles collections and print the last one"
    )
    _add_common(snap, "none")
    snap.add_argument("--cycles", type=_count, default=1, help="collections to run (default 1)")
    snap.add_argument("--format", choices=("json", "table"), default="table")
    status = commands.add_parser(
        "status", help="my containers, the GPUs and limits I was given, what I use, insights"
    )
    status.add_argument("--simulate", metavar="SCENARIO", help=_SIMULATE_HELP)
    status.add_argument(
        "--interval",
        type=_positive,
        metavar="SECONDS",
        help="time between cycles (default 1; 10 of simulated time under --simulate)",
    )
    status.add_argument("--cycles", type=_count, default=2,
                        help="collections to run (default 2: CPU use needs two)")
    status.add_argument("--format", choices=("json", "table"), default="table")
    status.add_argument("--as-user", metavar="NAME",
                        help="show this user's workloads (name or uid) instead of mine")
    status.add_argument("--watch", action="store_true",
                        help="redraw every --interval seconds (default 1) until q or Ctrl-C, "
                             "with my training sessions' data wait")
    _add_thresholds(status)
    doctor = commands.add_parser("doctor", help="check the environment and say what to fix")
    doctor.add_argument("--format", choices=("json", "table"), default="table")
    doctor.add_argument("--exporter", action="append", choices=AGENT_EXPORTERS,
                        help="check what this exporter needs too (repeatable)")
    doctor.add_argument("--timeout", type=_positive, default=2.0, metavar="SECONDS",
                        help="limit for each network check (default 2)")
    doctor.add_argument("--root", default="/", metavar="PATH",
                        help="check the host tree mounted at PATH for the security checks "
                             "(default /)")
    _add_usage(commands)
    return parser


def _checked(check: Any) -> Any:
    """An argparse type from a checker that raises ValueError."""

    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _add_usage(commands: Any) -> None:
    from otel_gpu.cli.usage import DEFAULT_MATCH, GROUPS, check_duration, check_match, check_time

    usage = commands.add_parser(
        "usage", help="GPU-hours, slice-hours and kWh per tenant, from Prometheus or Mimir",
        description="Reads the accounting counters from a Prometheus-compatible query API: "
        "$OTEL_GPU_PROM_URL (or --url), with $OTEL_GPU_PROM_BEARER_TOKEN or "
        "$OTEL_GPU_PROM_USERNAME/$OTEL_GPU_PROM_PASSWORD, and $OTEL_GPU_PROM_TENANT for Mimir.")
    usage.add_argument("--since", type=_checked(check_duration), default="7d",
                       help="the period, as a PromQL duration (default 7d)")
    usage.add_argument("--until", type=_checked(check_time), metavar="TIME",
                       help="the period's end: unix seconds or ISO 8601 (default now)")
    usage.add_argument("--by", choices=tuple(GROUPS), default="user")
    usage.add_argument("--format", choices=("table", "json", "csv"), default="table")
    usage.add_argument("--url", help="the query API (default $OTEL_GPU_PROM_URL)")
    usage.add_argument("--match", type=_checked(check_match), default=DEFAULT_MATCH,
                       help="label matchers selecting the agents' series "
                       f"(default {DEFAULT_MATCH})")
    usage.add_argument("--timeout", type=_positive, default=30.0, metavar="SECONDS",
                       help="limit for each query (default 30)")


class StopSignals:
    """Records SIGTERM, SIGINT and SIGHUP from the moment it is installed, so that a signal that
    arrives while the pipeline is still being imported or built stops the agent after its first
    export instead of killing it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def restore(self) -> None:
        """Put back the handlers there were before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        self.event.set()

    def for_one_shot(self) -> None:
        """For a command that does not run until signalled: Ctrl-C interrupts it (ending in exit
        130 without a traceback), SIGTERM and SIGHUP end it as usual."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if self.received == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is not None:
            signal.raise_signal(self.received)


def run_status(args: argparse.Namespace) -> int:
    from otel_gpu.cli.status import collect_view, view_from_agent
    from otel_gpu.cli.status_render import print_status
    from otel_gpu.cli.status_server import NoAgent, ask_agent
    from otel_gpu.config import status_socket
    from otel_gpu.insights.thresholds_file import load_thresholds

    path = status_socket() if args.simulate is None else None
    if path is not None:
        try:
            request = {"as_user": args.as_user} if args.as_user else {}
            reply = ask_agent(path, request)
            view = view_from_agent(reply)
            if reply.get("ignored"):
                print("otel-gpu: the agent shows you your own share only (ignored: "
                      f"{', '.join(map(str, reply['ignored']))})", file=sys.stderr)
            print_status(view, args.format)
            return EXIT_OK
        except NoAgent as err:
            print(f"otel-gpu: no agent answered on {path} ({err}); collecting here for "
                  f"{args.cycles} cycle{'s' if args.cycles != 1 else ''}", file=sys.stderr)
    options = {"thresholds": load_thresholds(args.thresholds)}
    if args.watch:
        return _watch_status(args, options)
    view, message = collect_view(simulate=args.simulate, interval_s=args.interval,
                                 cycles=args.cycles, as_user=args.as_user,
                                 collector_options=options)
    if message:
        print(f"otel-gpu: {message}; showing CPU and memory only", file=sys.stderr)
    print_status(view, args.format)
    return EXIT_OK


def _watch_status(args: argparse.Namespace, options: dict[str, object]) -> int:
    from otel_gpu.cli.status import ViewSource
    from otel_gpu.cli.watch import run_watch

    if args.format == "json":
        raise ConfigError("--watch draws a table; --format json prints one view")
    source = ViewSource(simulate=args.simulate, interval_s=args.interval, as_user=args.as_user,
                        collector_options=options)
    try:
        if source.message:
            print(f"otel-gpu: {source.message}; showing CPU and memory only", file=sys.stderr)
        return run_watch(source, refresh_s=args.interval or 1.0)
    finally:
        source.close()


def run_doctor(args: argparse.Namespace) -> int:
    from otel_gpu.cli.doctor import print_report, run_checks
    from otel_gpu.cli.doctor_security import run_security_checks

    results = run_checks(exporters=args.exporter or (), timeout_s=args.timeout)
    results += run_security_checks(root=args.root, timeout_s=args.timeout)
    return print_report(results, args.format)


def _run(args: argparse.Namespace, stop: StopSignals) -> int:
    if args.command == "agent":
        from otel_gpu.cli.agent import run_agent

        return run_agent(args, stop.event)
    stop.for_one_shot()
    if args.command == "status":
        return run_status(args)
    if args.command == "doctor":
        return run_doctor(args)
    if args.command == "usage":
        from otel_gpu.cli.usage import run_usage

        return run_usage(args)
    from otel_gpu.cli.agent import run_snapshot

    return run_snapshot(args)


def main(argv: Sequence[str] | None = None) -> int:
    stop = StopSignals()
    try:
        return _main(argv, stop)
    finally:
        stop.restore()


def _is_scenario_error(err: Exception) -> bool:
    # A ScenarioError can only come from a loaded simulator; a real run never loads it.
    scenario = sys.modules.get("otel_gpu.simulate.scenario")
    return scenario is not None and isinstance(err, scenario.ScenarioError)


def _main(argv: Sequence[str] | None, stop: StopSignals) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="otel-gpu: %(name)s: %(message)s")
    try:
        try:
            return _run(args, stop)
        except ConfigError as err:
            print(f"otel-gpu: {err}", file=sys.stderr)
            return EXIT_USAGE
        except Exception as err:
            if not _is_scenario_error(err):
                raise
            print(f"otel-gpu: {err}", file=sys.stderr)
            return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as err:
        print(f"otel-gpu: unexpected error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_UNEXPECTED
