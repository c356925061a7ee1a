"""What a loader serves of a shard, as ``verify`` counts it.

``verify`` reports a record as ``missing_record`` when ``make_loader(...,
on_error="skip")`` would not serve it to a task that reads the tar (images, or
every task on shards without an index), so that its count is what such a loader
loses. Besides the records in no shard, that is:

* every sample of a shard the loader skips whole (:attr:`Served.refusal`): with an
  index (format version 2), a tar of another byte size than the manifest lists
  (cut, garbage appended, replaced), or an index the loader refuses (missing,
  unreadable, other bytes or sha256, describing another shard or sample count);
* past a fault in a shard of the right size, the samples the loader cannot
  read: through the tar headers (no index) every sample from the fault on,
  which ``verify``'s own walk loses too; through an index, none but those
  below (``verify`` reads on too: :meth:`Served.samples_past_fault`);
* through an index, the samples whose image does not follow its own tar
  header at the offset the index gives (:meth:`Served.unserved`);
* through the tar headers, the samples past the count the manifest lists:
  the plan never asks for them.

Tasks that read only the index (``mlm``, DNA-only ``classify`` and ``embed``)
lose none of a shard whose tar alone is damaged; the loader warns of it instead.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from .format import MEMBERS, Sample, load_index
from .format.scan import jpg_headers_ok
from .schema import BioscanError

__all__ = ["Served"]


class Served:
    """What a loader that reads the tar serves of one shard; its index loaded (and checked) once.

    Parameters
    ----------
    path : Path
        The shard, present in the folder.
    entry : dict
        Its manifest entry.
    """

    def __init__(self, path: Path, entry: dict):
        self.path, self.entry = path, entry
        self.refusal, self.table = self._load()

    def _load(self):
        """``(why a loader skips the shard whole, or None; its index table, or None)``.

        The words are the ``missing_record`` detail: ``"which a loader reading
        images skips whole: 373760 bytes, the manifest says 747520"`` or ``"which a
        loader skips whole: shard index ... is missing ..."``. Without an index the
        header walk loses samples from a fault on, never a whole shard.
        """
        listed = self.entry.get("index")
        if not isinstance(listed, dict) or not isinstance(listed.get("name"), str):
            return None, None
        size = self.path.stat().st_size
        if size != self.entry["bytes"]:  # the index describes another tar: no image offset can be trusted
            return f"which a loader reading images skips whole: {size} bytes, the manifest says " \
                   f"{self.entry['bytes']}", None
        try:
            return None, load_index(str(self.path.parent / listed["name"]), self.entry)  # the loader's checks
        except BioscanError as exc:
            return f"which a loader skips whole: {exc}", None

    def unserved(self, keys: list[str]) -> list[str | None] | None:
        """For each key read from the shard, why a loader that reads the tar does not serve it (None: it does).

        None for the whole list when it serves them all. Every key of a shard the
        loader skips whole (:attr:`refusal`); through the tar headers, the keys past
        the count the manifest lists (the plan asks for no more; with an index, a
        count that differs from the index's is a refusal); through an index, the
        keys whose image is not where the index puts it (:meth:`_misplaced`: an
        index that matches its manifest entry can still be stale).
        """
        if self.refusal is not None:
            return [self.refusal] * len(keys)
        if self.table is None:
            listed = self.entry["count"]
            if len(keys) <= listed:
                return None
            why = f"which a loader does not read: past the {listed} samples the manifest lists"
            return [None] * listed + [why] * (len(keys) - listed)
        misplaced = self._misplaced()
        if not misplaced:
            return None
        why = "whose image a loader does not find where the index puts it (a damaged tar header, or a stale index)"
        return [why if key in misplaced else None for key in keys]

    def _misplaced(self) -> set[str]:
        """The keys whose image does not follow its own tar header at the index's offset."""
        table = self.table
        if table is None or not len(table):
            return set()
        keys = table.column("processid").to_pylist()
        with open(self.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        try:
            good = jpg_headers_ok(mm, keys, table.column("jpg_offset").to_numpy())
        finally:
            mm.close()
        return {key for key, ok in zip(keys, good.tolist()) if not ok}

    def samples_past_fault(self, start: int):
        """Samples ``start`` onwards of an indexed shard, read at the offsets its index gives.

        A loader with an index reads past a damaged tar header: each image at its
        offset (lost only when it does not follow its own header, which
        :meth:`unserved` tells), the rest from the index. Yields the samples in
        shard order, for ``verify`` to check as read; nothing for a shard without
        an index (the header walk stops at the fault) or one a loader refuses
        (all of it is lost).
        """
        if self.table is None:
            return
        table = self.table.slice(start)
        if not len(table):
            return
        keys = table.column("processid").to_pylist()
        spans = {ext: (table.column(f"{ext}_offset").to_numpy(), table.column(f"{ext}_size").to_numpy())
                 for ext in MEMBERS}
        with open(self.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        try:
            for i, key in enumerate(keys):
                yield _sample_at(mm, key, {ext: (int(at[i]), int(size[i])) for ext, (at, size) in spans.items()})
        finally:
            mm.close()


def _sample_at(mm, key: str, spans: dict) -> Sample:
    """The sample's members, in tar order, read at their offsets (absent ones, offset -1, left out)."""
    members = sorted((at, ext, size) for ext, (at, size) in spans.items() if at >= 0)
    return Sample(key, members[0][0] - 512, [(ext, bytes(mm[at:at + size])) for at, ext, size in members])
