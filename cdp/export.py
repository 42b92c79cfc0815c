"""Every live profile as NDJSON: ``GET /cdp/profiles:export`` and ``cdp export FILE``.

``ndjson_chunks`` walks ``cdp:profiles`` in canonical-id order, ``CHUNK`` profiles per
read (two Redis round trips each), and yields each chunk as bytes: one JSON document
per line, the same document ``GET /cdp/profiles/{id}`` answers. Memory stays at one
chunk whatever the number of profiles. It is not a point-in-time snapshot: a profile
is written as it is when its chunk is read; profiles created meanwhile are included,
and one merged away before its chunk is read is left out (its survivor, always the
older profile, may have been written before the merge).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from cdp import keys
from cdp.connect import Client, connect
from cdp.profiles import read_page
from cdp.settings import Settings

CHUNK = 500

Progress = Callable[[int, int], None]


def encode_line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


async def ndjson_chunks(
    redis: Client, chunk: int = CHUNK, progress: Progress | None = None
) -> AsyncGenerator[bytes, None]:
    """NDJSON of every live profile, ``chunk`` profiles per yielded block; after each
    block ``progress(written, total)`` (total: ``cdp:profiles`` at the start, or more)."""
    total = int(await redis.zcard(keys.PROFILES))
    done, cursor = 0, 0
    while True:
        docs, next_cursor = await read_page(redis, cursor, chunk)
        if docs:
            yield b"".join(encode_line(doc) for doc in docs)
        done += len(docs)
        if progress is not None:
            progress(done, max(total, done))
        if next_cursor is None:
            return
        cursor = next_cursor


async def export_profiles(
    redis: Client, out: BinaryIO, progress: Progress | None = None, *, chunk: int = CHUNK
) -> int:
    """Write every live profile to ``out`` as NDJSON; returns how many were written."""
    written = 0

    def count(done: int, total: int) -> None:
        nonlocal written
        written = done
        if progress is not None:
            progress(done, total)

    async for block in ndjson_chunks(redis, chunk, count):
        out.write(block)
    out.flush()
    return written


class ProgressBar:
    """``[#########.....................]  1500/5000  30%`` redrawn in place (``\\r``)."""

    WIDTH = 30

    def __init__(self, stream: TextIO, interval: float = 0.1) -> None:
        self.stream = stream
        self.interval = interval
        self._last = -interval
        self._shown = 0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < self.interval:
            return
        self._last = now
        filled = self.WIDTH * done // total if total else self.WIDTH
        percent = 100 * done // total if total else 100
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done:>{len(str(total))}}/{total}"
        line += f" {percent:3d}%"
        self.stream.write("\r" + line.ljust(self._shown))
        self.stream.flush()
        self._shown = len(line)

    def finish(self) -> None:
        """Erase the bar, so that what follows starts on a clean line."""
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0


def _write_file(path: Path, run: Callable[[BinaryIO], Coroutine[Any, Any, int]]) -> int:
    """Write to ``<path>.partial`` and rename it over ``path`` once complete, so that a
    failed export never leaves a truncated file behind; devices and pipes directly."""
    try:
        special = not stat.S_ISREG(path.stat().st_mode)
    except FileNotFoundError:
        special = False
    if special:
        with path.open("wb") as out:
            return asyncio.run(run(out))
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("wb") as out:
            count = asyncio.run(run(out))
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return count


def main_export(settings: Settings, path: str) -> int:
    """``cdp export FILE`` (``-``: stdout): a progress bar on stderr when it is a terminal
    (and stdout is not the same terminal), then one summary line; the exit status."""
    to_stdout = path == "-"
    tty = sys.stderr.isatty() and not (to_stdout and sys.stdout.isatty())
    bar = ProgressBar(sys.stderr) if tty else None
    started = time.monotonic()

    async def run(out: BinaryIO) -> int:
        redis = await connect(settings, socket_connect_timeout=2, socket_timeout=30)
        try:
            return await export_profiles(redis, out, bar)
        finally:
            await redis.aclose()

    try:
        count = asyncio.run(run(sys.stdout.buffer)) if to_stdout else _write_file(Path(path), run)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        print("cdp: export stopped: the output was closed", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cdp: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.finish()
    where = "stdout" if to_stdout else path
    elapsed = time.monotonic() - started
    print(f"cdp: exported {count} profiles to {where} in {elapsed:.1f}s", file=sys.stderr)
    return 0
