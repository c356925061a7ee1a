"""The bundled demo dataset, generated once into a cache folder on first use."""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path

from .. import atomic
from ..schema import DEFAULT_PACKAGE, METADATA_CSV, BioscanError
from .common import SYNTH_VERSION
from .dataset import generate

__all__ = ["DEMO_RECORDS", "DEMO_ENV", "demo_root"]

#: Number of records of the bundled demo dataset (seed 0, cropped_256).
DEMO_RECORDS = 300
#: Environment variable naming the folder of the demo dataset.
DEMO_ENV = "BIOSCAN_IO_DEMO_DIR"
DEMO_DIRNAME = f"demo-v{SYNTH_VERSION}"

# Written last into a complete demo folder.
_DEMO_DONE = ".bioscan_io_demo_complete"


def demo_root() -> Path:
    """The root of the bundled demo dataset, generated on first use.

    The demo dataset has :data:`DEMO_RECORDS` records (seed 0, ``cropped_256``
    images).  It lives in ``$BIOSCAN_IO_DEMO_DIR`` when that is set, else in
    ``~/.cache/bioscan-io/demo-v1`` (or a folder in the temporary directory when
    the cache cannot be written).  It is generated into a temporary sibling
    folder and renamed into place, so a reader never sees a half-written
    dataset and two processes may call this at once.

    Returns
    -------
    pathlib.Path
        The folder that contains ``bioscan5m/``.

    Raises
    ------
    BioscanError
        If ``$BIOSCAN_IO_DEMO_DIR`` names a folder that cannot be written or
        that holds something other than the demo dataset.
    """
    override = os.environ.get(DEMO_ENV)
    if override:
        return _ensure_demo(Path(override).expanduser())
    default = Path.home() / ".cache" / "bioscan-io" / DEMO_DIRNAME
    try:
        return _ensure_demo(default)
    except BioscanError:
        try:
            user = str(os.getuid())
        except AttributeError:  # pragma: no cover - Windows
            user = os.environ.get("USERNAME", "user")
        fallback = Path(tempfile.gettempdir()) / f"bioscan-io-{DEMO_DIRNAME}-{user}"
        return _ensure_demo(fallback)


def _demo_complete(path: Path) -> bool:
    return (path / _DEMO_DONE).is_file() and (path / METADATA_CSV).is_file()


def _ensure_demo(final: Path) -> Path:
    """Generate the demo dataset into ``final`` unless it is there already."""
    if _demo_complete(final):
        return final
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise BioscanError(f"{final} exists but does not hold the bioscan-io demo dataset")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        atomic.sweep(final.parent, final.name, older_than=3600)  # left by killed processes
    except OSError as e:
        raise BioscanError(f"cannot write the demo dataset into {final.parent}: {e.strerror or e}") from None
    try:
        with atomic.replacing(final) as tmp:
            generate(tmp, n_records=DEMO_RECORDS, seed=0, package=DEFAULT_PACKAGE, workers=1)
            (tmp / _DEMO_DONE).write_text(f"bioscan-io demo dataset v{SYNTH_VERSION}\n", encoding="utf-8")
            # an empty folder (e.g. made for the env var) is replaced; a full one
            # means another process got there first, and the rename fails
            with suppress(OSError):
                final.rmdir()
    except OSError as e:
        if not _demo_complete(final):
            raise BioscanError(f"cannot write the demo dataset into {final}: {e.strerror or e}") from None
    return final
