"""Running a generator in a child process, a few items ahead of the process that uses them."""

from __future__ import annotations

import multiprocessing as mp
import queue as _queue
import traceback
from contextlib import contextmanager

__all__: list[str] = []


def _can_fork() -> bool:
    return "fork" in mp.get_all_start_methods()


@contextmanager
def _ahead(make, args, background: bool):
    """Iterate over the items of the generator ``make(*args)``, made by a child process when ``background``.

    The child is forked, so it sees the caller's arrays without their being
    copied or pickled; it stays at most one item ahead (the one in the queue),
    besides the one it is making.  An error in it is
    raised here (as RuntimeError, with its traceback).  The items are the same
    either way: only where they are made changes.
    """
    if not background:
        items = make(*args)
        try:
            yield items
        finally:
            items.close()
        return
    ctx = mp.get_context("fork")
    q = ctx.Queue(maxsize=1)
    proc = ctx.Process(target=_produce, args=(q, make, args), daemon=True)
    proc.start()
    try:
        yield _consume(q, proc)
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join()
        q.close()


def _produce(q, make, args):
    try:
        for item in make(*args):
            q.put(("item", item))
        q.put(("end", None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        q.put(("error", traceback.format_exc()))


def _consume(q, proc):
    while True:
        try:
            kind, item = q.get(timeout=10)
        except _queue.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"the generator's worker process died (exit code {proc.exitcode})") from None
            continue
        if kind == "end":
            return
        if kind == "error":
            raise RuntimeError(f"the generator's worker process failed:\n{item}")
        yield item
