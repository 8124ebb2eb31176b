"""Streaming throughput: the same shards from a loopback S3 endpoint (moto, started here) vs local disk.

    .venv/bin/python bench/bench_data.py [--builtin mnist] [--workers 1] [--batch-size 64] [--repeats 3]

Builds the built-in dataset's train split once into a temp folder, uploads the identical shards to a fresh
moto server on 127.0.0.1, then reads one full epoch through `ShardStream` (decode, shuffle, batch) from each
side. Prints images/s (best of --repeats), time to first batch (manifest read included) and the S3/disk
ratio side by side, with /proc/pressure/cpu, since other tenants on a shared machine skew timings 2-5x.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import s3fs
from moto.server import ThreadedMotoServer

from orchestrator.config.schema import DataConfig
from orchestrator.data.builtin import builtin_sources
from orchestrator.data.pipeline import ShardStream
from orchestrator.data.writer import write_dataset

BUCKET = "bench-data"
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def cpu_pressure() -> str:
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "n/a"


def start_s3() -> ThreadedMotoServer:
    """A moto S3 server on an ephemeral loopback port; the AWS env of this process points at it."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update({**DUMMY_AWS_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}"})
    return server


def read_epoch(cfg: DataConfig) -> tuple[float, float, int]:
    """(seconds for the epoch, seconds to the first batch, images) for one fresh stream."""
    started = time.perf_counter()
    stream = ShardStream(cfg, rank=0, world_size=1)
    first, images = 0.0, 0
    for batch, _ in stream.epoch_batches():
        if not images:
            first = time.perf_counter() - started
        images += len(batch)
    return time.perf_counter() - started, first, images


def measure(url: str, args: argparse.Namespace) -> dict[str, float]:
    cfg = DataConfig(url=url, batch_size=args.batch_size, loader_workers=args.workers, shuffle_buffer=1000)
    runs = [read_epoch(cfg) for _ in range(args.repeats)]
    best = min(runs)
    return {"images_per_s": best[2] / best[0], "first_batch_s": min(r[1] for r in runs), "images": best[2]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--builtin", default="mnist")
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (0: in-process)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    server = start_s3()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
            local = f"{tmp}/train"
            manifest = write_dataset(
                builtin_sources(args.builtin)["train"], local, shard_size=args.shard_size
            )
            fs = s3fs.S3FileSystem()
            fs.mkdir(BUCKET)
            fs.put(f"{local}/", f"{BUCKET}/{args.builtin}/train/", recursive=True)
            print(
                f"{args.builtin} train: {manifest.num_samples} images in {len(manifest.shards)} shards, "
                f"{manifest.image_size}px; batch {args.batch_size}, {args.workers} loader worker(s), "
                f"best of {args.repeats}; cpu {cpu_pressure()}"
            )
            disk = measure(local, args)
            s3 = measure(f"s3://{BUCKET}/{args.builtin}/train", args)
    finally:
        server.stop()
    print(f"{'':<22}{'local disk':>12}{'loopback S3':>14}{'S3 / disk':>11}")
    print(
        f"{'images/s':<22}{disk['images_per_s']:>12.0f}{s3['images_per_s']:>14.0f}"
        f"{s3['images_per_s'] / disk['images_per_s']:>11.2f}"
    )
    print(
        f"{'time to first batch s':<22}{disk['first_batch_s']:>12.3f}{s3['first_batch_s']:>14.3f}"
        f"{s3['first_batch_s'] / disk['first_batch_s']:>11.2f}"
    )
    print(f"cpu after: {cpu_pressure()}")


if __name__ == "__main__":
    main()
