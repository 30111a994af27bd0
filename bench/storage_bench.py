"""Storage benchmark: put/get of 1,000 small files and sync of a 1,000-file tree, local vs S3.

The local backend (default, fsync on) is the baseline; the S3 backend runs against a real
moto server on loopback started by this script, in the same run::

    .venv/bin/python bench/storage_bench.py [--files 1000] [--size 1024] [--concurrency 8]

moto is a Python S3 server, so the S3 column measures the client path plus moto, not MinIO.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hiclaw.host import ComponentContext
from hiclaw.plugins.storage.local import make_local_storage
from hiclaw.plugins.storage.local.settings import LocalStorageSettings
from hiclaw.testing.s3 import start_moto


async def _bounded(jobs: list[Callable[[], Awaitable[object]]], concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[object]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


async def _timed(action: Callable[[], Awaitable[object]]) -> tuple[float, object]:
    started = time.perf_counter()
    result = await action()
    return time.perf_counter() - started, result


async def measure(storage, tree: Path, work: Path, files: int, size: int, concurrency: int) -> dict[str, float]:
    payload = os.urandom(size)
    keys = [f"shared/tasks/bench/put/{i:04d}.bin" for i in range(files)]
    figures: dict[str, float] = {}
    figures["put"], _ = await _timed(lambda: _bounded([lambda k=k: storage.put(k, payload) for k in keys], concurrency))
    figures["get"], _ = await _timed(lambda: _bounded([lambda k=k: storage.get(k) for k in keys], concurrency))
    figures["sync up (all new)"], first = await _timed(lambda: storage.sync(tree, "shared/tasks/bench/tree/"))
    figures["sync up (no change)"], again = await _timed(lambda: storage.sync(tree, "shared/tasks/bench/tree/"))
    down = work / "down"
    figures["sync down (all new)"], pulled = await _timed(
        lambda: storage.sync(down, "shared/tasks/bench/tree/", direction="down"))
    assert len(first.transferred) == files and not again.transferred and len(pulled.transferred) == files, (
        "sync moved the wrong number of files")
    return figures


def make_tree(root: Path, files: int, size: int) -> None:
    for i in range(files):
        path = root / f"d{i % 20:02d}" / f"f{i:04d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        past = time.time() - 60  # so the first sync is unambiguous
        os.utime(path, (past, past))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per file")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight for put/get")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hiclaw-storage-bench-"))
    server = start_moto()
    try:
        tree = work / "tree"
        make_tree(tree, args.files, args.size)
        local = make_local_storage(LocalStorageSettings(root=work / "local-data"), ComponentContext(home=work))
        s3 = server.make_storage(concurrency=args.concurrency)
        (work / "l").mkdir()
        (work / "s").mkdir()
        baseline = await measure(local, tree, work / "l", args.files, args.size, args.concurrency)
        figures = await measure(s3, tree, work / "s", args.files, args.size, args.concurrency)
        await s3.stop()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"storage: {args.files} files x {args.size} B, {args.concurrency} in flight; "
          f"baseline = local backend (fsync on), S3 = minio SDK -> moto server on loopback")
    print(f"{'operation':<22}{'local (baseline)':>24}{'s3 (moto)':>24}{'s3 / local':>12}")
    for name, base in baseline.items():
        value = figures[name]
        rate = f"{args.files / value:,.0f} files/s" if "no change" not in name else "checked"
        base_rate = f"{args.files / base:,.0f} files/s" if "no change" not in name else "checked"
        print(f"{name:<22}{f'{base:.3f} s ({base_rate})':>24}{f'{value:.3f} s ({rate})':>24}{value / base:>11.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
