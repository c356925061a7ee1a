"""The BIOSCAN-5M dataset's facts, in one place.

Every other module imports its column names, splits, ranks, image packages and
folder layout from here, named as the dataset names them (SPEC section 1).
"""

from __future__ import annotations

import hashlib
import os

__all__ = [
    "COLUMN_KINDS", "COLUMNS", "STRING_COLUMNS", "CATEGORICAL_COLUMNS", "FLOAT_COLUMNS", "UINT8_COLUMNS",
    "NULLABLE_INT_COLUMNS", "RANKS", "TAXONOMIC_RANKS", "TEXT_RANKS", "MISSING_RANK_TEXT", "MISSING_LABEL",
    "SPLIT_SIZES", "SPLITS", "SEEN_SPLITS", "UNSEEN_SPLITS", "SPLIT_UNIONS", "SPLIT_ALIASES",
    "CHUNK_LENGTH", "PACKAGES", "DEFAULT_PACKAGE", "DATASET_DIR", "METADATA_CSV", "METADATA_JSONLD",
    "IMAGES_DIR", "IMAGE_ARCHIVE_STEM", "IMAGE_ARCHIVE_PATTERN", "ARCHIVE_IMAGES_PREFIX", "ROOT_ENV",
    "RGB_MEAN", "RGB_STD", "MAX_NUCLEOTIDES", "NA_VALUES", "BioscanError", "chunk_of", "image_relpath",
    "image_subpath", "expand_split", "split_folder_name"
]

#: Every metadata column, in the order of the published CSV file, with its type as
#: the official loader reads it: "str" (plain string), "category" (categorical
#: string; an empty cell means missing), "float" (empty means missing), "uint8",
#: "Int64" (nullable integer).
COLUMN_KINDS = {
    "processid": "str",
    "sampleid": "str",
    "taxon": "category",
    "phylum": "category",
    "class": "category",
    "order": "category",
    "family": "category",
    "subfamily": "category",
    "genus": "category",
    "species": "category",
    "dna_bin": "category",
    "dna_barcode": "str",
    "country": "category",
    "province_state": "category",
    "coord-lat": "float",
    "coord-lon": "float",
    "image_measurement_value": "float",
    "area_fraction": "float",
    "scale_factor": "float",
    "inferred_ranks": "uint8",
    "split": "str",
    "index_bioscan_1M_insect": "Int64",
    "chunk": "str",
}
#: Metadata columns, in the order of the published CSV file.
COLUMNS = tuple(COLUMN_KINDS)


def _of_kind(kind: str) -> tuple[str, ...]:
    return tuple(c for c, k in COLUMN_KINDS.items() if k == kind)


#: Plain string columns (never categorical).
STRING_COLUMNS = _of_kind("str")
#: Categorical string columns; an empty cell means missing.
CATEGORICAL_COLUMNS = _of_kind("category")
#: Float columns; an empty cell means missing.
FLOAT_COLUMNS = _of_kind("float")
#: Small unsigned integer column.
UINT8_COLUMNS = _of_kind("uint8")
#: Nullable integer column.
NULLABLE_INT_COLUMNS = _of_kind("Int64")

#: Ranks that have a label index (``<rank>_index``), in taxonomic order.
RANKS = ("phylum", "class", "order", "family", "subfamily", "genus", "species", "dna_bin")
#: The taxonomic ranks proper (no BIN).
TAXONOMIC_RANKS = RANKS[:-1]
#: Ranks used in the CLIP taxonomy text, and the word standing for a missing one.
TEXT_RANKS = ("order", "family", "genus", "species")
MISSING_RANK_TEXT = "not_classified"
#: The label index of a record with no value at a rank (the official loader's
#: pandas category code for a missing value).
MISSING_LABEL = -1

#: The eight partitions, with their sizes in the full release.
SPLIT_SIZES = {
    "pretrain": 4_677_756,
    "train": 289_203,
    "val": 14_757,
    "test": 39_373,
    "key_unseen": 36_465,
    "val_unseen": 8_819,
    "test_unseen": 7_887,
    "other_heldout": 76_590,
}
SPLITS = tuple(SPLIT_SIZES)
SEEN_SPLITS = ("train", "val", "test")
UNSEEN_SPLITS = ("key_unseen", "val_unseen", "test_unseen")
#: Names that stand for a union of splits.
SPLIT_UNIONS = {"all": SPLITS, "seen": SEEN_SPLITS, "unseen": UNSEEN_SPLITS}
SPLIT_ALIASES = {"validation": "val"}

#: Characters of md5(processid) that name the image's chunk folder, per split.
CHUNK_LENGTH = {
    "pretrain": 2,
    "train": 1,
    "other_heldout": 1,
    "val": 0,
    "test": 0,
    "key_unseen": 0,
    "val_unseen": 0,
    "test_unseen": 0,
}

#: Image packages, and the default one.
PACKAGES = ("original_full", "cropped", "original_256", "cropped_256")
DEFAULT_PACKAGE = "cropped_256"

#: Folder layout under a dataset root.
DATASET_DIR = "bioscan5m"
METADATA_CSV = os.path.join(DATASET_DIR, "metadata", "csv", "BIOSCAN_5M_Insect_Dataset_metadata.csv")
METADATA_JSONLD = os.path.join(
    DATASET_DIR, "metadata", "jsonld", "BIOSCAN_5M_Insect_Dataset_metadata.jsonld"
)
IMAGES_DIR = os.path.join(DATASET_DIR, "images")

#: The published zip archives of an image package, as the download pages name them:
#: one archive (``BIOSCAN_5M_cropped_256.zip``), numbered parts of the large packages
#: (``BIOSCAN_5M_original_full.01.zip`` .. ``.05.zip``, ``BIOSCAN_5M_cropped.01.zip``,
#: ``.02.zip``), or per-partition archives as on Zenodo (``BIOSCAN_5M_cropped_256_train.zip``,
#: ``_eval.zip``, ``_pretrain.01.zip``, ``_pretrain.02.zip``). ``{package}`` is filled in.
IMAGE_ARCHIVE_STEM = "BIOSCAN_5M_{package}"
IMAGE_ARCHIVE_PATTERN = r"BIOSCAN_5M_{package}(?:_(?:pretrain|train|eval))?(?:\.\d+)?\.zip"
#: Member names in those archives are ``{prefix}{package}/{split}/[{chunk}/]{processid}.jpg``,
#: with this prefix (the archives extract into the dataset root) or without its ``bioscan5m/``.
ARCHIVE_IMAGES_PREFIX = f"{DATASET_DIR}/images/"

#: Environment variable naming the dataset root.
ROOT_ENV = "BIOSCAN5M_ROOT"

#: Image normalisation constants of the dataset (RGB, 0..1 scale).
RGB_MEAN = (0.76281859, 0.76503749, 0.76373138)
RGB_STD = (0.14205404, 0.15642502, 0.17309470)

#: Barcodes are truncated to this many bases for modelling (never when sharding).
MAX_NUCLEOTIDES = 660


class BioscanError(Exception):
    """A problem with the user's input: its message names the file, record or shard."""


def chunk_of(processid: str, split: str) -> str:
    """The chunk folder name of a record: the first characters of md5(processid).

    Empty for the splits that have no chunk folders.
    """
    n = CHUNK_LENGTH[split]
    if n == 0:
        return ""
    return hashlib.md5(processid.encode("utf-8")).hexdigest()[:n]


def image_relpath(processid: str, split: str, chunk: str | None, package: str = DEFAULT_PACKAGE) -> str:
    """Path of a record's image relative to the dataset root."""
    parts = [IMAGES_DIR, package, split]
    if chunk:
        parts.append(chunk)
    parts.append(processid + ".jpg")
    return os.path.join(*parts)


def image_subpath(processid: str, split: str, chunk: str | None) -> str:
    """Path of a record's image under its package folder, ``/``-separated as in the zip archives."""
    return f"{split}/{chunk}/{processid}.jpg" if chunk else f"{split}/{processid}.jpg"


def expand_split(name: str) -> tuple[str, ...]:
    """The canonical splits that a split argument stands for, in release order.

    Accepts one split, ``a+b`` unions, ``seen``, ``unseen``, ``all`` and the alias
    ``validation``.

    Raises
    ------
    BioscanError
        If any part is not a split name, or a split is named twice.
    """
    if not isinstance(name, str) or not name.strip():
        raise BioscanError(f"empty split name; valid names are {', '.join(SPLITS + tuple(SPLIT_UNIONS))}")
    wanted: set[str] = set()
    for part in name.split("+"):
        part = SPLIT_ALIASES.get(part.strip(), part.strip())
        if part in SPLIT_UNIONS:
            parts = set(SPLIT_UNIONS[part])
        elif part in SPLIT_SIZES:
            parts = {part}
        else:
            valid = ", ".join(SPLITS + tuple(SPLIT_UNIONS) + tuple(SPLIT_ALIASES))
            raise BioscanError(f"unknown split {part!r} in {name!r}; valid names are {valid}")
        twice = sorted(wanted & parts, key=SPLITS.index)
        if twice:  # "train+train" would make a folder of its own for the same records
            raise BioscanError(f"split {name!r} names {', '.join(twice)} twice; name each split once")
        wanted |= parts
    return tuple(s for s in SPLITS if s in wanted)


def split_folder_name(name: str) -> str:
    """The folder name used for a split argument: canonical parts joined by ``+``.

    Unions named by a keyword keep the keyword (``seen``), so ``shards/seen/``.
    """
    parts = [SPLIT_ALIASES.get(p.strip(), p.strip()) for p in name.split("+")]
    expand_split(name)  # validates
    return "+".join(parts)

#: Cell values read as missing: the defaults of ``pandas.read_csv``, which the
#: official loader uses, so that missing labels agree with it exactly.
NA_VALUES = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
    "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)
