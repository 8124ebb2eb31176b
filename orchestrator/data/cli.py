"""`python -m orchestrator.data build | verify | list-builtins`: parse, call, print one line per error.

The modules that build and verify shards import torch and webdataset (~1.3 s on 2 cores): `build` and
`verify` import them only once the URL's scheme has been checked, so bad input answers at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.cli_errors import at_least, run
from orchestrator.data.registry import BUILTINS
from orchestrator.data.shards import Manifest, join_url
from orchestrator.data.storage import reaching

if TYPE_CHECKING:
    from orchestrator.data.sources import Source

BUILTIN_PREFIX = "builtin:"
FOLDER_DEFAULT_SIZE = 32  # px for folders and JSON-lines lists when --image-size is not given


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.data", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    build = verbs.add_parser(
        "build",
        help="write webdataset shards + manifest.json",
        description="Built-in sources (builtin:NAME) are written to OUT/train and OUT/test; "
        "`python -m orchestrator.data list-builtins` lists them.",
    )
    build.add_argument(
        "--source",
        required=True,
        help="an image folder (one subfolder per class), a JSON-lines list, or builtin:NAME",
    )
    build.add_argument(
        "--out", required=True, help="fsspec URL: s3://bucket/prefix, gs://..., file:///path, a path"
    )
    build.add_argument(
        "--image-size",
        type=at_least(1),
        help=f"px (builtins: their default; others: {FOLDER_DEFAULT_SIZE})",
    )
    build.add_argument("--shard-size", type=at_least(1), default=256, help="samples per shard (default 256)")
    build.add_argument(
        "--channels", type=int, choices=(1, 3), default=3, help="1 or 3 (default 3): folders and lists only"
    )
    build.add_argument(
        "--keep-order",
        action="store_true",
        help="folders and lists: write in listing order (default: a seeded shuffle, so shards mix classes)",
    )
    build.add_argument("--overwrite", action="store_true", help="replace a dataset already at --out")
    build.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    verify = verbs.add_parser("verify", help="re-read every shard against manifest.json")
    verify.add_argument("url", help="the dataset's fsspec URL or path (the folder holding manifest.json)")
    verbs.add_parser("list-builtins", help="the built-in datasets (nothing is downloaded)")
    return parser


def _sources(args: argparse.Namespace) -> dict[str, Source]:
    """Output URL -> source: one per split for builtins, the --out URL itself otherwise."""
    from orchestrator.data.builtin import builtin_sources  # see the module docstring
    from orchestrator.data.sources import image_folder, json_lines, shuffled

    if args.source.startswith(BUILTIN_PREFIX):
        splits = builtin_sources(args.source.removeprefix(BUILTIN_PREFIX), args.image_size)
        return {join_url(args.out, split): source for split, source in splits.items()}
    size = args.image_size or FOLDER_DEFAULT_SIZE
    path = Path(args.source)
    source = (
        json_lines(path, image_size=size, channels=args.channels)
        if path.is_file()
        else image_folder(path, image_size=size, channels=args.channels)
    )
    return {args.out: source if args.keep_order else shuffled(source)}


def _summary(m: Manifest) -> str:
    megabytes = sum(s.bytes for s in m.shards) / 1e6
    return (
        f"wrote {m.url}: {m.num_samples} samples in {len(m.shards)} shards ({megabytes:.1f} MB), "
        f"{m.image_size}px x {m.channels}ch, {m.num_classes} classes, digest {m.digest}"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.verb == "list-builtins":
        for b in BUILTINS.values():
            print(f"builtin:{b.name:<14} {b.default_size}px default  {b.summary}")
    elif args.verb == "build":
        with reaching(args.out, "--out"):
            from orchestrator.data.writer import write_dataset  # see the module docstring

            for url, source in _sources(args).items():
                manifest = write_dataset(
                    source,
                    url,
                    shard_size=args.shard_size,
                    overwrite=args.overwrite,
                    progress=not args.no_progress,
                )
                print(_summary(manifest))
    else:
        with reaching(args.url):
            from orchestrator.data.verify import verify_dataset  # see the module docstring

            report = verify_dataset(args.url)
        print("\n".join(report.lines()))
        return 0 if report.ok else 1
    return 0
