"""Writing the official layout: the metadata CSV and JSON-LD, image folders, zip archives.

Every file is written under a temporary name and renamed into place
(:mod:`bioscan_io.atomic`), so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import json
import os
import zipfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from ..atomic import atomic_open, replacing
from ..schema import (
    ARCHIVE_IMAGES_PREFIX,
    CHUNK_LENGTH,
    COLUMNS,
    DEFAULT_PACKAGE,
    IMAGE_ARCHIVE_STEM,
    IMAGES_DIR,
    SPLITS,
    BioscanError,
)
from .common import _check_int

__all__ = ["JSONLD_CONTEXT", "pack_images"]


#: JSON-LD context: Darwin Core terms where one fits, project terms otherwise.
JSONLD_CONTEXT = {
    "dwc": "http://rs.tdwg.org/dwc/terms/",
    "schema": "https://schema.org/",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "bioscan": "https://biodiversitygenomics.net/5M-insects/terms#",
    "bold": "https://portal.boldsystems.org/record/",
    "processid": "dwc:occurrenceID",
    "sampleid": "dwc:materialSampleID",
    "taxon": "dwc:scientificName",
    "phylum": "dwc:phylum",
    "class": "dwc:class",
    "order": "dwc:order",
    "family": "dwc:family",
    "subfamily": "dwc:subfamily",
    "genus": "dwc:genus",
    "species": "bioscan:species",
    "dna_bin": "bioscan:dnaBin",
    "dna_barcode": "bioscan:dnaBarcode",
    "country": "dwc:country",
    "province_state": "dwc:stateProvince",
    "coord-lat": {"@id": "dwc:decimalLatitude", "@type": "xsd:double"},
    "coord-lon": {"@id": "dwc:decimalLongitude", "@type": "xsd:double"},
    "image_measurement_value": {"@id": "bioscan:imageMeasurementValue", "@type": "xsd:double"},
    "area_fraction": {"@id": "bioscan:areaFraction", "@type": "xsd:double"},
    "scale_factor": {"@id": "bioscan:scaleFactor", "@type": "xsd:double"},
    "inferred_ranks": {"@id": "bioscan:inferredRanks", "@type": "xsd:unsignedByte"},
    "split": "bioscan:split",
    "index_bioscan_1M_insect": {"@id": "bioscan:indexBioscan1MInsect", "@type": "xsd:integer"},
    "chunk": "bioscan:chunk",
    "Record": "dwc:Occurrence",
}




_JSONLD_KEYS = ("@id", "@type", *COLUMNS)
_BARCODE = COLUMNS.index("dna_barcode")


class _MetadataWriter:
    """Writes the metadata CSV and its JSON-LD twin, a chunk of rows at a time.

    Use as a context manager; both files appear under their names only when
    the block ends without error.  The JSON-LD file is one JSON document whose
    ``@graph`` array holds one record per line, so that it can be read a line
    at a time too.
    """

    def __init__(self, csv_path: Path, jsonld_path: Path):
        self.paths = csv_path, jsonld_path
        # what json.dumps(doc, ensure_ascii=False, allow_nan=False) makes, without a new encoder per record
        self.encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
        self.n = 0

    def __enter__(self):
        self.stack = ExitStack()
        with self.stack:
            files = []
            for path in self.paths:
                path.parent.mkdir(parents=True, exist_ok=True)
                files.append(self.stack.enter_context(atomic_open(path, "w", encoding="utf-8", newline="")))
            self.csv, self.jsonld = files
            csv.writer(self.csv, lineterminator="\n").writerow(COLUMNS)
            # the cells before and after the barcode (see write)
            self.head = csv.writer(self.csv, lineterminator="").writerow
            self.tail = csv.writer(self.csv, lineterminator="\n").writerow
            self.jsonld.write('{"@context": ' + json.dumps(JSONLD_CONTEXT, ensure_ascii=False) + ',\n"@graph": [\n')
            self.stack = self.stack.pop_all()
        return self

    def write(self, rows) -> None:
        """Write ``rows``: lists of Python values in COLUMNS order (None: missing)."""
        # The csv module writes None as an empty cell, any other value as its
        # str() (a float's repr).  It takes longer over a barcode's ~650 letters
        # than over all the other cells, to find none that needs quoting (they
        # are IUPAC letters), so the barcode is written as it is, between them.
        head, tail, write, b = self.head, self.tail, self.csv.write, _BARCODE
        for row in rows:
            head(row[:b])
            write("," + row[b] + ",")
            tail(row[b + 1 :])
        encode, write = self.encode, self.jsonld.write
        for row in rows:  # a record at a time: a chunk's text would take a hundred megabytes
            write(",\n" if self.n else "")
            write(encode(dict(zip(_JSONLD_KEYS, ["bold:" + row[0], "Record", *row]))))
            self.n += 1

    def __exit__(self, *exc):
        if exc[0] is None:
            self.jsonld.write("\n]}\n")
        return self.stack.__exit__(*exc)


def _make_image_folders(images_dir: Path):
    """Every split folder and every chunk folder of a package, empty ones included, as published."""
    for split in SPLITS:
        d = images_dir / split
        d.mkdir(parents=True, exist_ok=True)
        k = CHUNK_LENGTH[split]
        if k:
            for c in range(16**k):
                (d / f"{c:0{k}x}").mkdir(exist_ok=True)


#: Timestamp of every member of a packed archive, so that packing is reproducible.
_ZIP_DATE = (2024, 6, 13, 0, 0, 0)


def pack_images(root, dest=None, package: str = DEFAULT_PACKAGE, parts: int = 1, prefix: bool = True,
                compression: int = zipfile.ZIP_STORED) -> list:
    """Pack a dataset's images into zip archives named and laid out as the published ones.

    Members are ``bioscan5m/images/{package}/{split}/[{chunk}/]{processid}.jpg``
    (with their folders), in name order. One archive is ``BIOSCAN_5M_{package}.zip``;
    ``parts > 1`` cuts the members, in order, into ``BIOSCAN_5M_{package}.01.zip``,
    ``.02.zip``... as the ``original_full`` and ``cropped`` packages are published.

    Parameters
    ----------
    root : str or os.PathLike
        Dataset root holding ``bioscan5m/images/{package}``.
    dest : str or os.PathLike, optional
        Folder to write the archives into (default: ``root``).
    package : str, default "cropped_256"
        Image package to pack.
    parts : int, default 1
        Number of archives.
    prefix : bool, default True
        Start member names with ``bioscan5m/`` (as published); else with ``images/``.
    compression : int, default zipfile.ZIP_STORED
        Compression method of the members.

    Returns
    -------
    list of pathlib.Path
        The archives written.
    """
    parts = _check_int("parts", parts, minimum=1)
    folder = Path(os.fspath(root)) / IMAGES_DIR / package
    if not folder.is_dir():
        raise BioscanError(f"no {package} images to pack: {folder} is not a folder")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    base = (ARCHIVE_IMAGES_PREFIX if prefix else "images/") + package + "/"
    stem = IMAGE_ARCHIVE_STEM.format(package=package)
    names = [f"{stem}.zip"] if parts == 1 else [f"{stem}.{i + 1:02d}.zip" for i in range(parts)]
    dest = Path(os.fspath(dest)) if dest is not None else Path(os.fspath(root))
    dest.mkdir(parents=True, exist_ok=True)
    archives = []
    for name, group in zip(names, np.array_split(np.arange(len(files)), parts)):
        _write_archive(dest / name, folder, base, [files[k] for k in group], compression)
        archives.append(dest / name)
    return archives


def _write_archive(path: Path, folder: Path, base: str, rels, compression: int) -> None:
    """A zip of the files ``rels`` of ``folder``, named ``base + rel``, with their folder entries."""
    with replacing(path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        folders = set()
        for rel in rels:
            parent = base + rel.rpartition("/")[0] + "/"
            if parent not in folders:  # folder entries, as zip tools write them
                folders.add(parent)
                zf.writestr(zipfile.ZipInfo(parent, _ZIP_DATE), b"")
            info = zipfile.ZipInfo(base + rel, _ZIP_DATE)
            info.compress_type = compression
            zf.writestr(info, (folder / rel).read_bytes())
