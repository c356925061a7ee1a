"""Command-line entry points: ``bioscan-shard`` and ``bioscan-io <command>``.

Every error a user can cause ends the command with exit status 2 and one line on
stderr naming the file, record or shard at fault.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from .schema import DEFAULT_PACKAGE, PACKAGES, ROOT_ENV, BioscanError

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str) -> int:
    """Bytes from ``"500MB"``, ``"1GiB"``, ``"2e9"`` or a plain integer."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]i?)?[bB]?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500MB, 1GiB, 200000000)")
    try:
        value = float(m.group(1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    return int(value * _UNITS[(m.group(2) or "").lower()])


def parse_options(pairs: list[str]) -> dict:
    """``["key=value", ...]`` -> dict; values parsed as JSON when they can be (``anon=true``)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BioscanError(f"--storage-option needs KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _shard_parser(prog: str) -> argparse.ArgumentParser:
    from .shard import DEFAULT_MAXCOUNT, DEFAULT_MAXSIZE

    p = argparse.ArgumentParser(
        prog=prog,
        description="Pack one split of BIOSCAN-5M (images, barcodes, metadata) into WebDataset tar shards.",
    )
    p.add_argument("--root", help=f"dataset root holding bioscan5m/ (default: ${ROOT_ENV}, else the bundled demo data)")
    p.add_argument("--split", default="pretrain",
                   help="split, a+b union, seen, unseen, all or validation (default: pretrain)")
    p.add_argument("--package", default=DEFAULT_PACKAGE, choices=PACKAGES, help=f"image package (default: {DEFAULT_PACKAGE})")
    p.add_argument("--out", default="shards",
                   help="output folder, or an fsspec URL such as s3://bucket/shards; shards go to OUT/SPLIT/ "
                        "(default: shards)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of a remote --out's filesystem, e.g. endpoint_url=http://127.0.0.1:9000 "
                        "(repeatable; values parsed as JSON when they can be)")
    p.add_argument("--metadata", help="metadata CSV or JSON-LD to use instead of the root's")
    p.add_argument("--images", nargs="+", metavar="ARCHIVE",
                   help="the package's zip archive(s), read without extracting (e.g. every "
                        "BIOSCAN_5M_original_full.0*.zip part), or its image folder (default: "
                        "ROOT/bioscan5m/images/PACKAGE, else the package's BIOSCAN_5M_*.zip archives in ROOT)")
    p.add_argument("--maxcount", type=int, default=DEFAULT_MAXCOUNT, help=f"most samples per shard (default: {DEFAULT_MAXCOUNT})")
    p.add_argument("--maxsize", type=parse_size, default=DEFAULT_MAXSIZE,
                   help="most bytes per shard, e.g. 500MB or 1GiB (default: 1GiB)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pre-shuffle (default: 0)")
    p.add_argument("--workers", type=int, default=None, help="parallel writer processes (default: CPUs, at most 8)")
    p.add_argument("--skip-missing", action="store_true",
                   help="shard records that have an image; list those without one in missing_images.txt")
    p.add_argument("--overwrite", action="store_true", help="replace shards of another run in the split folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _run(prog: str, fn, args) -> int:
    try:
        fn(args)
    except BioscanError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def _do_shard(args) -> None:
    from .shard import shard_split

    summary = shard_split(
        args.root,
        args.split,
        package=args.package,
        out=args.out,
        metadata=args.metadata,
        images=args.images,
        maxcount=args.maxcount,
        maxsize=args.maxsize,
        seed=args.seed,
        workers=args.workers,
        skip_missing=args.skip_missing,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        log=lambda msg: print(msg, file=sys.stderr),
        storage_options=parse_options(args.storage_option),
    )
    print(summary.line())


def shard_main(argv=None) -> int:
    """``bioscan-shard``: shard one split of a dataset root."""
    args = _shard_parser("bioscan-shard").parse_args(argv)
    return _run("bioscan-shard", _do_shard, args)


def _verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bioscan-io verify",
        description="Check a split folder of shards: files against manifest.json, every sample readable and "
                    "complete, every record of the metadata present once and unchanged. "
                    "Exit status: 0 OK, 1 problems found, 2 usage error.",
    )
    p.add_argument("folder", help="split folder holding manifest.json and the shards")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--root", help="dataset root whose metadata (and, with --images, images) to compare with "
                                       "(default: those the manifest names)")
    source.add_argument("--metadata", help="metadata CSV or JSON-LD to compare with (default: the manifest's)")
    p.add_argument("--images", action="store_true", help="also compare every image byte for byte with its source file")
    p.add_argument("--json", action="store_true", help="print one JSON object (folder, ok, samples, shards, problems)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def verify_main(argv=None) -> int:
    """``bioscan-io verify``: 0 when the shards are sound, 1 when problems were found, 2 on a usage error."""
    import json

    from .verify import verify_split

    args = _verify_parser().parse_args(argv)
    try:
        report = verify_split(args.folder, root=args.root, metadata=args.metadata, images=args.images,
                              progress=not args.no_progress)
    except BioscanError as exc:
        print(f"bioscan-io verify: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bioscan-io verify: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _peek_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bioscan-io peek",
        description="Render the first samples of a shard as a contact-sheet PNG (image, processid, "
                    "order/family/genus/species, barcode length) and print a summary of its split "
                    "(records with a value and distinct values per rank, barcode length distribution).",
    )
    p.add_argument("path", metavar="SHARD_OR_SPLIT",
                   help="a shard (.tar), or a split folder holding manifest.json (the sheet shows its first shard)")
    p.add_argument("-n", type=int, default=16, help="samples on the sheet (default: 16)")
    p.add_argument("--columns", type=int, default=4, help="tiles per row (default: 4)")
    p.add_argument("--thumb", type=int, default=192, help="thumbnail box side in pixels (default: 192)")
    p.add_argument("--out", default="peek.png", help="contact sheet PNG to write (default: peek.png)")
    p.add_argument("--palette", action="store_true", help="write a 256-colour PNG (about a quarter of the size)")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--no-sheet", action="store_true", help="only print the split summary")
    only.add_argument("--no-summary", action="store_true", help="only write the contact sheet")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _do_peek(args) -> None:
    from .peek import contact_sheet, split_summary, summary_folder

    if not args.no_sheet:
        sheet = contact_sheet(args.path, n=args.n, columns=args.columns, thumb=args.thumb, out=args.out,
                              palette=args.palette)
        print(sheet.line())
    if args.no_summary:
        return
    if summary_folder(args.path) is None:
        if args.no_sheet:
            split_summary(args.path)  # raises: no manifest beside the shard
        print(f"bioscan-io peek: no manifest.json beside {args.path}, so no split summary", file=sys.stderr)
        return
    summary = split_summary(args.path, progress=not args.no_progress)
    print(("\n" if not args.no_sheet else "") + "\n".join(summary.lines()))


def main(argv=None) -> int:
    """``bioscan-io <command>``: ``shard`` (as bioscan-shard), ``generate``, ``verify`` or ``peek``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"shard": "pack a split into shards (same as bioscan-shard)",
                "generate": "write a synthetic dataset in the official layout",
                "verify": "check a split folder of shards against its manifest and the metadata",
                "peek": "contact-sheet PNG of a shard's first samples, and a summary of its split"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: bioscan-io {" + ",".join(commands) + "} ...\n", file=sys.stderr)
        for name, text in commands.items():
            print(f"  {name:10s} {text}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "shard":
        args = _shard_parser("bioscan-io shard").parse_args(rest)
        return _run("bioscan-io shard", _do_shard, args)
    if command == "verify":
        return verify_main(rest)
    if command == "peek":
        return _run("bioscan-io peek", _do_peek, _peek_parser().parse_args(rest))
    from .synth import generate_main

    return generate_main(rest)


if __name__ == "__main__":
    sys.exit(main())
