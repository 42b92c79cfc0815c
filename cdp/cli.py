"""The cdp command: a real-time Customer Data Platform on Redis Streams.

    cdp up        everything locally: embedded Redis (AOF), the API, N worker processes
    cdp api       the HTTP API alone, against CDP_REDIS_URL
    cdp worker    one worker process, against CDP_REDIS_URL
    cdp profile   print a profile as JSON, by any identifier or canonical id
    cdp segments  list segments, or watch ENTER/EXIT events live
    cdp export    write every profile as NDJSON (FILE, or - for stdout)
    cdp replay    publish dropped or parked events again (dropped | dead)
    cdp config    print the effective configuration
    cdp bench     send a mixed workload to a running stack and print the rates

Errors a user can fix (a bad setting, a profile that does not exist, a missing
redis-server) end with a one-line message and exit status 2 (1 for not found).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cdp.errors import CdpError, ProfileNotFound, SettingsError
from cdp.settings import Settings, describe, format_duration, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="TOML settings file (also CDP_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run Redis, the API and workers locally")
    up.add_argument("--port", type=int, default=8080, help="API port (default 8080)")
    up.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    up.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    up.add_argument(
        "--data-dir", default=".cdp-data", help="Redis data and AOF (default ./.cdp-data)"
    )
    up.add_argument(
        "--redis-port",
        type=int,
        default=None,
        help="embedded Redis port (default 6379, or a free one if taken)",
    )

    api = sub.add_parser("api", help="run the HTTP API against CDP_REDIS_URL")
    api.add_argument("--port", type=int, default=8080)
    api.add_argument("--host", default="127.0.0.1")

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

    bench = sub.add_parser("bench", help="measure a running stack")
    bench.add_argument("--url", default="http://127.0.0.1:8080", help="API base URL")
    bench.add_argument("--events", type=int, default=20_000)
    bench.add_argument("--concurrency", type=int, default=64)
    bench.add_argument("--users", type=int, default=2_000, help="distinct users in the workload")
    bench.add_argument(
        "--merge-ratio",
        type=float,
        default=0.0,
        help="share of the events that are ALIAS merging two existing profiles (after a warm-up)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.command == "up":
            sys.exit(_up(args, settings))
        elif args.command == "api":
            _api(args, settings)
        elif args.command == "worker":
            from workers.run import main as worker_main

            worker_main(settings, args.worker_id)
        elif args.command == "profile":
            sys.exit(_profile(args.identifier, settings))
        elif args.command == "segments":
            from cdp.segments.watch import list_segments, watch_segments

            if args.segments_command == "list":
                asyncio.run(list_segments(settings))
            else:
                asyncio.run(watch_segments(settings, args.start, set(args.segment)))
        elif args.command == "export":
            from cdp.export import main_export

            sys.exit(main_export(settings, args.file))
        elif args.command == "replay":
            from cdp.replay import main_replay

            sys.exit(main_replay(settings, args.source, args.since, args.event_ids, args.dry_run))
        elif args.command == "config":
            _config(settings)
        elif args.command == "bench":
            from cdp.bench import run_bench

            asyncio.run(
                run_bench(
                    settings,
                    args.url,
                    args.events,
                    args.concurrency,
                    args.users,
                    args.merge_ratio,
                )
            )
    except SettingsError as exc:
        print(f"cdp: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (CdpError, FileNotFoundError, RuntimeError) as exc:
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
    from aiohttp import web

    from cdp.ingest.app import create_app
    from cdp.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    web.run_app(
        create_app(settings),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        handle_signals=True,
        shutdown_timeout=5,
    )


def _profile(identifier: str, settings: Settings) -> int:
    from redis.asyncio import Redis

    from cdp.profiles import read_profile

    async def fetch() -> dict[str, object]:
        redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2)
        try:
            return await read_profile(redis, identifier)
        finally:
            await redis.aclose()

    try:
        print(json.dumps(asyncio.run(fetch()), indent=2))
    except ProfileNotFound as exc:
        print(f"cdp: {exc}", file=sys.stderr)
        return 1
    return 0


def _config(settings: Settings) -> None:
    defaults = {row[0]: row for row in describe()}
    print(f"{'key':34} {'value':28} environment variable")
    for f in fields(Settings):
        key = f.name[:-3] if f.name.endswith("_ms") else f.name
        key = key.replace("_", "-")
        value = getattr(settings, f.name)
        shown = format_duration(value) if f.name.endswith("_ms") else value
        if key in ("admin-token", "write-keys") and value:
            shown = "(set)"
        print(f"{key:34} {str(shown):28} {defaults[key][1]}")


def _up(args: argparse.Namespace, settings: Settings) -> int:
    """Supervise Redis, one API and ``--workers`` worker processes until Ctrl-C."""
    from cdp.embedded import RedisServer, port_is_free

    server = None
    if os.environ.get("CDP_REDIS_URL"):
        redis_url = settings.redis_url
    else:
        port = args.redis_port or (6379 if port_is_free(6379) else None)
        server = RedisServer(Path(args.data_dir), port)
        try:
            server.start()
        except BaseException:  # Ctrl-C while it starts: no orphaned redis-server
            server.stop()
            raise
        redis_url = server.url
    settings = replace(settings, redis_url=redis_url)
    env = {**os.environ, "CDP_REDIS_URL": redis_url}
    if args.config:
        env["CDP_CONFIG"] = str(Path(args.config).resolve())
    commands = {"api": ["api", "--host", args.host, "--port", str(args.port)]}
    for n in range(args.workers):
        commands[f"worker-{n + 1}"] = ["worker"]
    children: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(name: str) -> None:
        children[name] = subprocess.Popen(
            [sys.executable, "-m", "cdp", *commands[name]], env=env, start_new_session=True
        )

    stopping = False
    status = 0

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        for name in commands:
            spawn(name)
        print(
            f"cdp is up: API http://{args.host}:{args.port}  Redis {redis_url}"
            f"  ({args.workers} workers{', data in ' + str(server.data_dir) if server else ''})",
            flush=True,
        )
        print(f"  try: redis-cli -u {redis_url} --scan --pattern 'cdp:profile:*'", flush=True)
        print("  Ctrl-C stops everything.", flush=True)
        while not stopping:
            if server is not None and server.process and server.process.poll() is not None:
                print(
                    f"cdp: the embedded redis-server exited ({server.process.returncode}); "
                    f"stopping. See {server.data_dir / 'redis.log'}",
                    file=sys.stderr,
                )
                status = 1
                break
            for name, child in list(children.items()):
                if child.poll() is not None and not stopping:
                    print(
                        f"cdp: {name} exited with {child.returncode}; restarting", file=sys.stderr
                    )
                    time.sleep(1)
                    spawn(name)
            time.sleep(0.2)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        if server is not None:
            server.stop()
        print("cdp stopped.", flush=True)
    return status
