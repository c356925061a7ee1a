"""Command-line entry points: ``bioscan-shard`` and ``bioscan-io <command>``.

Each command is an entry of :data:`COMMANDS`: its help line, the function that
adds its arguments, and the function that runs it. Every error a user can cause
ends the command with exit status 2 and one line on stderr naming the file,
record or shard at fault (one wrapper, :func:`_run`, for every command).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable

from . import __version__
from .schema import DEFAULT_PACKAGE, PACKAGES, ROOT_ENV, BioscanError
from .wording import os_error_text, plural

__all__ = ["COMMANDS", "main", "shard_main", "parse_size", "parse_options"]

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


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, as every other user error (``--help`` still shows usage).

    argparse prints a multi-line ``usage:`` block before a bad argument's error;
    the promise is one line naming the cause, and where the usage is.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Version(argparse.Action):
    """``--version``: two lines as written (argparse's own would re-wrap them), made only when asked."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _version() -> str:
    """``bioscan-io VERSION``: the installed package's version (what pip lists), else the source
    tree's; then the PIL build in use (pillow-simd or stock Pillow) and its JPEG library, and
    whether crops are decoded as regions (bioscan_io._jpeg)."""
    try:
        version = importlib.metadata.version("bioscan-io")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        version = __version__
    from . import _pillow, jpeg_region

    return f"bioscan-io {version}\n{_pillow.describe()}\n{jpeg_region.describe()}"


def _progress_argument(p: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress``, the same for every command (read with :func:`_progress`)."""
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: shown when stderr is a terminal)")


def _progress(args: argparse.Namespace) -> bool:
    """Bars when asked for, else only on a terminal: a log file or a pipe gets no carriage-return noise."""
    return sys.stderr.isatty() if args.progress is None else args.progress


# ----------------------------------------------------------------------------- shard


def _shard_arguments(p: argparse.ArgumentParser) -> None:
    from .shard import DEFAULT_MAXCOUNT, DEFAULT_MAXSIZE

    p.add_argument("--root", help=f"dataset root holding bioscan5m/ (default: ${ROOT_ENV}, else the bundled demo data)")
    p.add_argument("--split", default="pretrain",
                   help="split, a+b union, seen, unseen, all or validation (default: pretrain)")
    p.add_argument("--package", default=DEFAULT_PACKAGE, choices=PACKAGES,
                   help=f"image package (default: {DEFAULT_PACKAGE})")
    p.add_argument("--out", default="shards",
                   help="output folder, an fsspec URL such as s3://bucket/shards, or 'pipe:CMD' with {name}: "
                        "each file piped to CMD's stdin, {name} replaced by its path (train/train-000000.tar, ..., "
                        "the manifest last), e.g. --out 'pipe:aws s3 cp - s3://bucket/shards/{name}'; "
                        "shards go to OUT/SPLIT/ (default: shards)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of a remote --out's filesystem, e.g. endpoint_url=http://127.0.0.1:9000 "
                        "(repeatable; values parsed as JSON when they can be)")
    p.add_argument("--metadata", help="metadata CSV or JSON-LD to use instead of the root's")
    p.add_argument("--images", nargs="+", metavar="ARCHIVE",
                   help="the package's zip archive(s), read without extracting (e.g. every "
                        "BIOSCAN_5M_original_full.0*.zip part), or its image folder (default: "
                        "ROOT/bioscan5m/images/PACKAGE, else the package's BIOSCAN_5M_*.zip archives in ROOT)")
    p.add_argument("--maxcount", type=int, default=DEFAULT_MAXCOUNT,
                   help=f"most samples per shard (default: {DEFAULT_MAXCOUNT})")
    p.add_argument("--maxsize", type=parse_size, default=DEFAULT_MAXSIZE,
                   help="most bytes per shard, e.g. 500MB or 1GiB (default: 1GiB)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pre-shuffle (default: 0)")
    p.add_argument("--workers", type=int, default=None, help="parallel writer processes (default: CPUs, at most 8)")
    p.add_argument("--skip-missing", action="store_true",
                   help="shard records that have an image; list those without one in missing_images.txt")
    p.add_argument("--overwrite", action="store_true", help="replace shards of another run in the split folder")
    _progress_argument(p)


def _shard(args) -> None:
    from .shard import shard_split

    summary = shard_split(
        args.root, args.split, package=args.package, out=args.out, metadata=args.metadata, images=args.images,
        maxcount=args.maxcount, maxsize=args.maxsize, seed=args.seed, workers=args.workers,
        skip_missing=args.skip_missing, overwrite=args.overwrite, progress=_progress(args), log=_stderr,
        storage_options=parse_options(args.storage_option),
    )
    print(summary.line())


# ----------------------------------------------------------------------------- generate


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="dataset root folder (bioscan5m/ is written inside it)")
    p.add_argument("--records", type=int, default=10_000, help="number of records (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--package", default=DEFAULT_PACKAGE, choices=PACKAGES,
                   help=f"image package (default {DEFAULT_PACKAGE})")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes for the images and large metadata (default: all CPUs)")
    p.add_argument("--no-images", action="store_true", help="write the metadata only")
    p.add_argument("--official-splits", action="store_true",
                   help="split the records in the proportions of the published release (91%% pretrain; its very "
                        "counts at --records 5150850) instead of the default shares, which give every split at "
                        "least ~3%%")
    p.add_argument("--image-pool", type=int, default=None, metavar="N",
                   help="render only N images and hard-link every other record's image to one of them "
                        "(a full-size dataset with images in seconds of rendering; default: one image per record)")
    _progress_argument(p)


def _generate(args) -> None:
    from .synth import generate

    ds = generate(args.root, n_records=args.records, seed=args.seed, package=args.package, workers=args.workers,
                  images=not args.no_images, progress=_progress(args), official_splits=args.official_splits,
                  image_pool=args.image_pool)
    print(ds.summary())


# ----------------------------------------------------------------------------- verify


def _verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="split folder holding manifest.json and the shards")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--root", help="dataset root whose metadata (and, with --images, images) to compare with "
                                       "(default: those the manifest names)")
    source.add_argument("--metadata", help="metadata CSV or JSON-LD to compare with (default: the manifest's)")
    p.add_argument("--images", action="store_true", help="also compare every image byte for byte with its source file")
    p.add_argument("--json", action="store_true", help="print one JSON object (folder, ok, samples, shards, problems)")
    _progress_argument(p)


def _verify(args) -> int:
    from .verify import verify_split

    report = verify_split(args.folder, root=args.root, metadata=args.metadata, images=args.images,
                          progress=_progress(args))
    print(json.dumps(report.to_dict(), ensure_ascii=False) if args.json else "\n".join(report.lines()))
    return 0 if report.ok else 1


# ----------------------------------------------------------------------------- index


def _index_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="split folder holding manifest.json and the shards")


def _index(args) -> None:
    from .format import index_split

    try:
        n = index_split(args.folder)
    except OSError as exc:
        # pyarrow's errors name only the temporary file beside the shard: say the folder and the cause.
        cause = os_error_text(exc) if exc.filename else os.strerror(exc.errno) if exc.errno else os_error_text(exc)
        raise BioscanError(f"cannot index {args.folder}: {cause}") from None
    print(f"bioscan-io index: {args.folder}: wrote {plural(n, 'shard index', 'shard indexes')}; "
          "manifest.json now lists them")


# ----------------------------------------------------------------------------- peek


def _peek_arguments(p: argparse.ArgumentParser) -> None:
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
    _progress_argument(p)


def _peek(args) -> None:
    from .peek import contact_sheet
    from .summary import split_summary, summary_folder

    if not args.no_sheet:
        sheet = contact_sheet(args.path, n=args.n, columns=args.columns, thumb=args.thumb, out=args.out,
                              palette=args.palette)
        print(sheet.line())
    if args.no_summary:
        return
    if summary_folder(args.path) is None:
        if args.no_sheet:
            split_summary(args.path)  # raises: no manifest beside the shard
        _stderr(f"bioscan-io peek: no manifest.json beside {args.path}, so no split summary")
        return
    summary = split_summary(args.path, progress=_progress(args))
    print(("\n" if not args.no_sheet else "") + "\n".join(summary.lines()))


# ----------------------------------------------------------------------------- export


def _export_arguments(p: argparse.ArgumentParser) -> None:
    from .export import EXPORT_FORMATS

    p.add_argument("folder", metavar="SPLIT_DIR", help="split folder holding manifest.json and the shards "
                                                       "(labels.json beside it)")
    p.add_argument("--format", default=EXPORT_FORMATS[0], choices=EXPORT_FORMATS,
                   help=f"file format (default: {EXPORT_FORMATS[0]})")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="file to write, e.g. train.parquet (its folder must exist)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    _progress_argument(p)


def _export(args) -> None:
    import pyarrow.parquet as pq

    from .export import export_parquet

    out = export_parquet(args.folder, args.out, force=args.force, progress=_progress(args))
    meta = pq.read_metadata(out)
    print(f"export: wrote {out}: {plural(meta.num_rows, 'sample')} of {args.folder} "
          f"({plural(meta.num_columns, 'column')}, {plural(meta.num_row_groups, 'row group')}, "
          f"{out.stat().st_size / 1e6:,.1f} MB)")


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, its arguments, and what runs it (returns the exit status, or None for 0)."""

    help: str
    description: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    interrupted: str = "interrupted"


#: The subcommands of ``bioscan-io``, by name.
COMMANDS = {
    "shard": Command("pack a split into shards (same as bioscan-shard)",
                     "Pack one split of BIOSCAN-5M (images, barcodes, metadata) into WebDataset tar shards.",
                     _shard_arguments, _shard, "interrupted; rerun the same command to resume"),
    "generate": Command("write a synthetic dataset in the official layout",
                        "Write a synthetic BIOSCAN-5M-like dataset (metadata CSV, JSON-LD and JPEG images).",
                        _generate_arguments, _generate),
    "verify": Command("check a split folder of shards against its manifest and the metadata",
                      "Check a split folder of shards: files against manifest.json, every sample readable and "
                      "complete, every record of the metadata present once and unchanged. "
                      "Exit status: 0 OK, 1 problems found, 2 usage error.",
                      _verify_arguments, _verify),
    "index": Command("write the per-shard indexes of a split sharded by an older bioscan-io",
                     "Write each shard's index (member offsets, barcodes, ranks, label indices: what the loader "
                     "reads instead of walking tar headers) beside it, and list them in manifest.json "
                     "(format version 2). For split folders sharded before indexes existed, or to replace a "
                     "damaged index.",
                     _index_arguments, _index),
    "peek": Command("contact-sheet PNG of a shard's first samples, and a summary of its split",
                    "Render the first samples of a shard as a contact-sheet PNG (image, processid, "
                    "order/family/genus/species, barcode length) and print a summary of its split "
                    "(records with a value and distinct values per rank, barcode length distribution).",
                    _peek_arguments, _peek),
    "export": Command("write a split's metadata, barcodes and label indices as one Parquet file",
                      "Write a split's metadata, barcodes and label indices (no images) as one Parquet file, "
                      "one row per sample in shard order, for Polars, DuckDB, pandas or Hugging Face datasets.",
                      _export_arguments, _export),
}


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bioscan-io", description="WebDataset shards and loaders for BIOSCAN-5M.")
    p.add_argument("--version", action=_Version, nargs=0, help="show the version and the PIL build in use, and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        command.arguments(sub.add_parser(name, help=command.help, description=command.description))
    return p


def _run(prog: str, command: Command, args: argparse.Namespace) -> int:
    """Run a command: its own exit status, 2 and one line on any user error, 130 on Ctrl-C.

    An ``OSError`` that escapes a command (a file it may not read or write, a file
    where a folder should be) is the user's to fix as well: one line naming the
    path and the cause, never a traceback, and never 1, which ``verify`` keeps
    for "problems found". Commands raise ``BioscanError`` themselves where they
    can say more; this is the net under them.
    """
    try:
        return command.run(args) or 0
    except BioscanError as exc:
        _stderr(f"{prog}: error: {exc}")
        return 2
    except OSError as exc:
        _stderr(f"{prog}: error: {os_error_text(exc)}")
        return 2
    except KeyboardInterrupt:
        _stderr(f"{prog}: {command.interrupted}")
        return 130


def main(argv=None) -> int:
    """``bioscan-io <command>``: a command of :data:`COMMANDS` (``shard`` is the same as bioscan-shard)."""
    args = _parser().parse_args(argv)
    return _run(f"bioscan-io {args.command}", COMMANDS[args.command], args)


def shard_main(argv=None) -> int:
    """``bioscan-shard``: shard one split of a dataset root."""
    command = COMMANDS["shard"]
    p = _Parser(prog="bioscan-shard", description=command.description)
    p.add_argument("--version", action=_Version, nargs=0, help="show the version and the PIL build in use, and exit")
    command.arguments(p)
    return _run("bioscan-shard", command, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
