"""``otel-gpu``: the node agent and one-shot snapshot (see the contract for every option)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from otel_gpu.cli.report import snapshot_document, snapshot_table
from otel_gpu.config import ConfigError
from otel_gpu.insights.thresholds_file import load_thresholds
from otel_gpu.telemetry.node_agent import AGENT_FILE_ENV, Announcement
from otel_gpu.telemetry.pipeline import Pipeline, build_pipeline
from otel_gpu.telemetry.providers import EXPORTERS

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as the contract says
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


def _add_common(parser: argparse.ArgumentParser, default_exporter: str) -> None:
    parser.add_argument(
        "--simulate",
        metavar="SCENARIO",
        help="use a simulated GPU server: a built-in name (dgx-a100, "
        "dgx-h100-mig, h200) or a scenario file (YAML or JSON)",
    )
    parser.add_argument(
        "--exporter",
        action="append",
        choices=EXPORTERS,
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
        default=os.environ.get("OTEL_GPU_THRESHOLDS") or None,
        help="insight thresholds and durations to change (YAML or JSON; see docs/insights.md); "
        "default: $OTEL_GPU_THRESHOLDS",
    )


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="otel-gpu", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    agent = commands.add_parser(
        "agent", help="collect every interval and export until SIGTERM/SIGINT"
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
    status.add_argument("--simulate", metavar="SCENARIO", help=snap_help(snap, "--simulate"))
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
    _add_thresholds(status)
    doctor = commands.add_parser("doctor", help="check the environment and say what to fix")
    doctor.add_argument("--format", choices=("json", "table"), default="table")
    doctor.add_argument("--exporter", action="append", choices=EXPORTERS,
                        help="check what this exporter needs too (repeatable)")
    doctor.add_argument("--timeout", type=_positive, default=2.0, metavar="SECONDS",
                        help="limit for each network check (default 2)")
    return parser


def snap_help(parser: argparse.ArgumentParser, option: str) -> str | None:
    """The help text of one of ``parser``'s options, so that shared options read the same."""
    for action in parser._actions:
        if option in action.option_strings:
            return action.help
    return None


def _pipeline(args: argparse.Namespace, default_exporter: str, in_memory: bool) -> Pipeline:
    exporters = args.exporter or [default_exporter]
    thresholds = load_thresholds(args.thresholds)
    pipeline = build_pipeline(
        simulate=args.simulate,
        exporters=exporters,
        interval_s=args.interval,
        in_memory=in_memory,
        thresholds=thresholds,
    )
    if pipeline.driver_message:
        print(f"otel-gpu: {pipeline.driver_message}; reporting host metrics only", file=sys.stderr)
    return pipeline


def run_agent(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pipeline = _pipeline(args, "otlp", in_memory=False)
    announcement = _announcement(args, pipeline)
    try:
        done = 0
        while not stop.is_set():
            started = time.monotonic()
            pipeline.collect_and_export()
            if announcement is not None:
                announcement.beat()
            done += 1
            if args.cycles and done >= args.cycles:
                break
            stop.wait(max(0.0, args.interval - (time.monotonic() - started)))
        if stop.is_set():
            pipeline.collect_and_export()  # the state at shutdown goes out too
    finally:
        try:
            if announcement is not None:
                announcement.close()
        finally:
            pipeline.shutdown()
    return EXIT_OK


def _announcement(args: argparse.Namespace, pipeline: Pipeline) -> Announcement | None:
    """The agent tells training sessions on this node that it runs (see ``node_agent``); a
    simulated one only where ``OTEL_GPU_AGENT_FILE`` names a file for it."""
    if args.simulate is not None and not os.environ.get(AGENT_FILE_ENV):
        return None
    host = pipeline.resource.attributes.get("host.name")
    return Announcement(str(host) if host else None, args.interval)


def run_snapshot(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args, "none", in_memory=True)
    try:
        cycles = max(1, args.cycles)
        snapshot = None
        for i in range(cycles):
            if i and args.simulate is None:
                time.sleep(args.interval)
            snapshot = pipeline.collect_and_export()
        assert pipeline.memory_reader is not None and snapshot is not None
        data = pipeline.memory_reader.get_metrics_data()
        if args.format == "json":
            insights = [insight.to_dict() for insight in snapshot.insights]
            json.dump(snapshot_document(data, insights), sys.stdout, indent=1, sort_keys=False)
            sys.stdout.write("\n")
        else:
            sys.stdout.write(snapshot_table(snapshot))
    finally:
        pipeline.shutdown()
    return EXIT_OK


def run_status(args: argparse.Namespace) -> int:
    from otel_gpu.cli.status import collect_view, print_status

    view, message = collect_view(simulate=args.simulate, interval_s=args.interval,
                                 cycles=args.cycles, as_user=args.as_user,
                                 collector_options={"thresholds": load_thresholds(
                                     args.thresholds)})
    if message:
        print(f"otel-gpu: {message}; showing CPU and memory only", file=sys.stderr)
    print_status(view, args.format)
    return EXIT_OK


def run_doctor(args: argparse.Namespace) -> int:
    from otel_gpu.cli.doctor import print_report, run_checks

    results = run_checks(exporters=args.exporter or (), timeout_s=args.timeout)
    return print_report(results, args.format)


def main(argv: Sequence[str] | None = None) -> int:
    from otel_gpu.simulate import ScenarioError

    logging.basicConfig(level=logging.WARNING, format="otel-gpu: %(name)s: %(message)s")
    args = make_parser().parse_args(argv)
    try:
        if args.command == "agent":
            return run_agent(args)
        if args.command == "status":
            return run_status(args)
        if args.command == "doctor":
            return run_doctor(args)
        return run_snapshot(args)
    except (ScenarioError, ConfigError) as err:
        print(f"otel-gpu: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as err:
        print(f"otel-gpu: unexpected error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_UNEXPECTED

