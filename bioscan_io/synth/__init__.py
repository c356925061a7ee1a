"""Generator of realistic, synthetic BIOSCAN-5M-like datasets.

The generated folder has the layout, columns, types and awkward cases of the real
release (SPEC section 1), so that every other part of the library can be tested
and demonstrated without downloading the dataset::

    ROOT/bioscan5m/metadata/csv/BIOSCAN_5M_Insect_Dataset_metadata.csv
    ROOT/bioscan5m/metadata/jsonld/BIOSCAN_5M_Insect_Dataset_metadata.jsonld
    ROOT/bioscan5m/images/{package}/{split}/[{chunk}/]{processid}.jpg

What is realistic about it:

* eight splits following the paper's rules: ``pretrain`` records never have a
  species (and often no genus); ``train``/``val``/``test`` hold "seen" species
  with scientific binomial names (``val``/``test`` species all occur in
  ``train``); ``key_unseen``/``val_unseen``/``test_unseen`` hold placeholder
  species under scientific genera, disjoint from the seen species
  (``val_unseen``/``test_unseen`` species all occur in ``key_unseen``);
  ``other_heldout`` holds placeholder species whose genus is missing or is
  itself a placeholder.  By default the splits are scaled so that each one holds
  at least about 3 % of the records (and at least 3 records from
  ``n_records >= 24``); ``official_splits=True`` follows the release's
  proportions (91 % pretrain) instead;
* a consistent taxonomy of real arthropod orders, families, subfamilies and
  genera (Diptera dominate: Cecidomyiidae, Chironomidae, Phoridae, Sciaridae...),
  BINs (``BOLD:AAB1234``) that map to mostly one species, and a few category
  values that stress sort orders (case, spaces, hyphens, non-ASCII letters);
* DNA barcodes derived from per-BIN consensus sequences (records of a species
  differ by ~1 %), mostly 658 bases, with N runs, other IUPAC letters, long,
  short and very short barcodes at small rates;
* JPEG images of insect-like specimens on a light background (body ellipses,
  legs, antennae, translucent wings, shadow, blur, sensor noise, vignetting),
  whose pixel statistics are close to the dataset's normalisation constants.

Everything is seeded: the same arguments give byte-identical files, whatever the
number of worker processes.  The metadata does not depend on the image package.
The records are made a chunk at a time, so that the release's 5,150,850
records take minutes and well under 1 GiB of memory; ``image_pool=N`` renders N
images and hard-links every record's image path to one of them, so that such a
dataset has images in seconds.

The package is split by concern: :mod:`.dataset` (:func:`generate`),
:mod:`.records` (the metadata records), :mod:`.taxa` and :mod:`.taxonomy` (the
species), :mod:`.ids`, :mod:`.barcodes`, :mod:`.geography`, :mod:`.specimen` and
:mod:`.images` (the photos), :mod:`.layout` (the files and zip archives),
:mod:`.stream` (a second process for large datasets) and :mod:`.demo` (the
bundled demo dataset).
"""

from __future__ import annotations

from .common import SYNTH_VERSION
from .dataset import MARKER_NAME, GeneratedDataset, generate
from .demo import DEMO_ENV, DEMO_RECORDS, demo_root
from .layout import JSONLD_CONTEXT, pack_images
from .records import OFFICIAL_SPLIT_SIZES, SPLIT_FRACTIONS
from .records import _split_counts  # noqa: F401  (the tests check the split sizes)

__all__ = [
    "GeneratedDataset",
    "generate",
    "pack_images",
    "demo_root",
    "SPLIT_FRACTIONS",
    "OFFICIAL_SPLIT_SIZES",
    "DEMO_RECORDS",
    "DEMO_ENV",
    "SYNTH_VERSION",
    "MARKER_NAME",
    "JSONLD_CONTEXT",
]
