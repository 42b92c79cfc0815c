"""The cdp command: a real-time Customer Data Platform on Redis Streams.

    cdp up        everything locally: embedded Redis (AOF), the API, N worker processes
                  (--cluster N: an embedded Redis Cluster; --redis-only: Redis alone)
    cdp api       the HTTP API alone, against CDP_REDIS_URL
    cdp worker    one worker process, against CDP_REDIS_URL
    cdp profile   print a profile as JSON, by any identifier or canonical id
    cdp segments  list segments, or watch ENTER/EXIT events live
    cdp export    write every profile as NDJSON (FILE, or - for stdout)
    cdp replay    publish dropped or parked events again (dropped | dead)
    cdp config    print the effective configuration
    cdp bench     measure a running stack: issue 10's rows beside the bare Redis
    cdp chaos     the fault suite: load + injected faults on a stack of its own, a verdict

Errors a user can fix (a bad setting, a profile that does not exist, a missing
redis-server) end with a one-line message and exit status 2 (1 for not found).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cdp.errors import CdpError, SettingsError
from cdp.settings import Settings, load_settings, print_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="TOML settings file (also CDP_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run Redis, the API and workers locally")
    up.add_argument("--port", type=int, default=8080, help="API port (default 8080)")
    up.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    up.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    up.add_argument(
        "--api-processes",
        type=int,
        default=None,
        help="API processes on the port (default: the api-processes setting, one per core)",
    )
    up.add_argument(
        "--data-dir", default=".cdp-data", help="Redis data and AOF (default ./.cdp-data)"
    )
    up.add_argument(
        "--redis-port",
        type=int,
        default=None,
        help="embedded Redis port (default 6379, or a free one if taken); with --cluster,"
        " the first node's on the first start (default 7000, or the next free ones)",
    )
    up.add_argument(
        "--cluster",
        type=int,
        default=None,
        metavar="N",
        help="run an embedded Redis Cluster of N masters (at least 3) instead of one Redis",
    )
    up.add_argument(
        "--replicas", type=int, default=0, metavar="R", help="with --cluster: replicas per master"
    )
    up.add_argument(
        "--redis-only",
        action="store_true",
        help="start only the embedded Redis (or cluster), no API or workers",
    )

    api = sub.add_parser("api", help="run the HTTP API against CDP_REDIS_URL")
    api.add_argument("--port", type=int, default=8080)
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument(
        "--processes",
        type=int,
        default=None,
        help="processes serving the port, SO_REUSEPORT (default: api-processes, one per core)",
    )

    worker = sub.add_parser("worker", help="run one worker against CDP_REDIS_URL")
    worker.add_argument(
        "--id", dest="worker_id", default=None, help="worker id (default: host-pid-random)"
    )

    profile = sub.add_parser("profile", help="print a profile as JSON")
    profile.add_argument(
        "identifier", help="user:<id>, anon:<id>, email:<address> or a canonical id"
    )

    segments = sub.add_parser("segments", help="list segments, or watch ENTER/EXIT live")
    seg_sub = segments.add_subparsers(dest="segments_command", required=True)
    seg_sub.add_parser("list", help="segments with their member counts")
    watch = seg_sub.add_parser("watch", help="print segment events as they happen (JSON lines)")
    watch.add_argument(
        "--from",
        dest="start",
        default="$",
        help="stream id to start after (0-0: everything kept; default: now)",
    )
    watch.add_argument(
        "--segment", action="append", default=[], help="only this segment (repeatable)"
    )

    export = sub.add_parser("export", help="write every profile as NDJSON")
    export.add_argument("file", help="output file, or - for stdout")

    replay = sub.add_parser("replay", help="publish dropped or parked events again, as imports")
    replay.add_argument(
        "source", choices=["dropped", "dead"], help="cdp:events:dropped or cdp:events:dead"
    )
    replay.add_argument(
        "--since", help="records from this time on: RFC 3339, or a duration back (24h, 7d)"
    )
    replay.add_argument(
        "--event-id",
        dest="event_ids",
        action="extend",
        nargs="+",
        default=[],
        help="only these events (repeatable)",
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="list what would be replayed; change nothing"
    )

    sub.add_parser("config", help="print the effective configuration")

    bench = sub.add_parser("bench", help="measure a running stack: issue 10's rows")
    bench.add_argument("--url", default="http://127.0.0.1:8080", help="API base URL")
    bench.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ROW",
        help="ingest, batch, drain, sustained, freshness, memory, mixed, merges (repeatable;"
        " default: all but mixed and merges)",
    )
    bench.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="closed-loop load generator: wrk when on PATH (auto), or Python processes",
    )
    bench.add_argument("--processes", type=int, default=0, help="Python client processes")
    bench.add_argument("--duration", type=float, default=12.0, help="seconds of ingest, batch")
    bench.add_argument("--concurrency", type=int, default=64, help="connections in flight")
    bench.add_argument("--calls", type=int, default=100, help="calls per /v1/batch request")
    bench.add_argument("--write-key", default="", help="default: the first write key setting")
    bench.add_argument("--admin-token", default="", help="default: the admin-token setting")
    bench.add_argument("--drain", type=int, default=200_000, help="events of the drain backlog")
    bench.add_argument("--worker-pids", default="", help="comma-separated (default: a /proc scan)")
    bench.add_argument("--sustain-seconds", type=float, default=60.0)
    bench.add_argument("--sustain-start", type=float, default=5_000.0, help="events/s")
    bench.add_argument("--sustain-steps", type=int, default=6, help="x1.5 each")
    bench.add_argument(
        "--fresh-rate", type=float, default=0.0, help="events/s (default: sustained / 2)"
    )
    bench.add_argument("--fresh-seconds", type=float, default=0.0, help="default: sustain's")
    bench.add_argument("--profiles", type=int, default=10_000, help="profiles of the memory row")
    bench.add_argument("--events", type=int, default=20_000, help="mixed row")
    bench.add_argument("--users", type=int, default=2_000, help="mixed row: distinct users")
    bench.add_argument(
        "--merge-ratio",
        type=float,
        default=0.0,
        help="mixed row: share of ALIAS merging two existing profiles (after a warm-up)",
    )
    bench.add_argument(
        "--merges", type=int, default=1_000, help="merges row: pairs of profiles merged"
    )

    chaos = sub.add_parser(
        "chaos", help="inject faults into a stack of its own under load, check what survived"
    )
    chaos.add_argument("--minutes", type=float, default=3.0, help="length of the faults phase")
    chaos.add_argument(
        "--appendfsync",
        choices=("always", "everysec"),
        default=None,
        help="AOF fsync policy of its Redis (default: the redis-appendfsync setting)",
    )
    chaos.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    chaos.add_argument("--users", type=int, default=100, help="distinct users (default 100)")
    chaos.add_argument("--concurrency", type=int, default=8, help="concurrent senders")
    chaos.add_argument("--seed", type=int, default=None, help="random seed (default: the time)")
    chaos.add_argument(
        "--data-dir", default=None, help="keep Redis data, logs and history here (default: temp)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        status = COMMANDS[args.command](args, settings)
        if status is not None:
            sys.exit(status)
    except SettingsError as exc:
        print(f"cdp: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (CdpError, FileNotFoundError) as exc:
        print(f"cdp: {exc}", file=sys.stderr)
        sys.exit(2)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        print(f"cdp: cannot reach Redis at {settings.redis_url}: {exc}", file=sys.stderr)
        sys.exit(2)
    except RedisError as exc:
        print(f"cdp: Redis answered with an error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _api(args: argparse.Namespace, settings: Settings) -> None:
    from cdp.api.server import run_api
    from cdp.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if args.processes is not None and args.processes < 1:
        raise SettingsError(f"--processes: must be at least 1, got {args.processes}")
    run_api(settings, args.host, args.port, args.processes)


# -- one function per command: (arguments, settings) -> exit status or None ----------


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from cdp.embedded_cluster import validate_shape
    from cdp.local import run_local

    if args.cluster is not None:
        validate_shape(args.cluster, args.replicas)
    elif args.replicas:
        raise SettingsError("--replicas: only with --cluster N")
    return run_local(
        settings,
        host=args.host,
        port=args.port,
        workers=args.workers,
        api_processes=args.api_processes,
        data_dir=args.data_dir,
        redis_port=args.redis_port,
        config=args.config,
        cluster=args.cluster,
        replicas=args.replicas,
        redis_only=args.redis_only,
    )


def _worker(args: argparse.Namespace, settings: Settings) -> None:
    from workers.run import main as worker_main

    worker_main(settings, args.worker_id)


def _profile(args: argparse.Namespace, settings: Settings) -> int:
    from cdp.profiles import main_profile

    return main_profile(settings, args.identifier)


def _segments(args: argparse.Namespace, settings: Settings) -> None:
    from cdp.segments.watch import list_segments, watch_segments

    if args.segments_command == "list":
        asyncio.run(list_segments(settings))
    else:
        asyncio.run(watch_segments(settings, args.start, set(args.segment)))


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from cdp.export import main_export

    return main_export(settings, args.file)


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from cdp.replay import main_replay

    return main_replay(settings, args.source, args.since, args.event_ids, args.dry_run)


def _config(args: argparse.Namespace, settings: Settings) -> None:
    print_config(settings)


def _bench(args: argparse.Namespace, settings: Settings) -> None:
    from cdp.bench import Options, run_bench
    from cdp.errors import BenchError

    try:
        pids = [int(p) for p in args.worker_pids.split(",") if p.strip()]
    except ValueError:
        raise BenchError("--worker-pids: comma-separated process ids") from None
    options = Options(
        url=args.url, only=args.only, client=args.client, processes=args.processes,
        duration=args.duration, concurrency=args.concurrency, calls=args.calls,
        write_key=args.write_key, admin_token=args.admin_token, drain=args.drain,
        worker_pids=pids, sustain_seconds=args.sustain_seconds,
        sustain_start=args.sustain_start, sustain_steps=args.sustain_steps,
        fresh_rate=args.fresh_rate, fresh_seconds=args.fresh_seconds,
        profiles=args.profiles, events=args.events, users=args.users,
        merge_ratio=args.merge_ratio, merges=args.merges,
    )  # fmt: skip
    asyncio.run(run_bench(settings, options))


def _chaos(args: argparse.Namespace, settings: Settings) -> int:
    from cdp.chaos.report import main_chaos

    return main_chaos(
        args.minutes,
        args.appendfsync or settings.redis_appendfsync,
        args.workers,
        args.users,
        args.concurrency,
        args.seed,
        args.data_dir,
    )


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int | None]] = {
    "up": _up,
    "api": _api,
    "worker": _worker,
    "profile": _profile,
    "segments": _segments,
    "export": _export,
    "replay": _replay,
    "config": _config,
    "bench": _bench,
    "chaos": _chaos,
}
