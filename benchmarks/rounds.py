"""Paired rounds: the timing discipline every comparison in benchmarks/ uses.

Each pipeline is an object with ``epoch() -> (seconds, samples)`` and
``close()``. :func:`interleaved` runs one epoch of each per round, rotating the
order; :func:`paired` takes the median over rounds of the time ratio of two of
them within a round. The VM's speed drifts by up to +-10% over minutes, which a
ratio of two best rounds, taken minutes apart, does not cancel; two epochs run
back to back do.
"""

from __future__ import annotations

import statistics
import time

__all__ = ["interleaved", "one_round", "paired", "fmt", "run_interleaved", "LoaderEpochs"]


class LoaderEpochs:
    """A pipeline of one ``make_loader`` loader: one epoch per call, a new epoch number each time."""

    def __init__(self, loader, name: str = "bioscan-io"):
        self.loader, self.name, self.n_epoch = loader, name, 0
        self.epoch()  # warm: workers started, indexes opened, pages cached

    def epoch(self) -> tuple[float, int]:
        self.loader.set_epoch(self.n_epoch)
        self.n_epoch += 1
        t0 = time.perf_counter()
        n = 0
        for batch in self.loader:
            n += len(batch["processid"])
        return time.perf_counter() - t0, n

    def close(self):
        del self.loader


def interleaved(pipes: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per epoch of each pipeline, one epoch each per round, rotating the order."""
    times: dict[str, list[float]] = {k: [] for k in pipes}
    for _ in range(rounds):
        one_round(pipes, times)
    return times


def one_round(pipes: dict, times: dict[str, list[float]]) -> None:
    """One epoch of each pipeline, appended to ``times``; round ``r`` (rounds so far) starts at pipeline ``r``.

    Every pipeline must yield as many samples as the others.
    """
    names = list(pipes)
    r = len(times[names[0]])
    expected = None
    for k in names[r % len(names):] + names[: r % len(names)]:
        seconds, n = pipes[k].epoch()
        expected = n if expected is None else expected
        assert n == expected, (k, n, expected)
        times[k].append(seconds)


def run_interleaved(rounds: int, **makers) -> dict[str, list[float]]:
    """Make the pipelines (``name=factory``), time them interleaved, close them all."""
    pipes = {}
    try:
        for name, make in makers.items():
            pipes[name] = make()
        return interleaved(pipes, rounds)
    finally:
        for p in pipes.values():
            p.close()


def paired(times: dict, a: str, b: str) -> float:
    """Median over rounds of ``a``'s time / ``b``'s time in the same round."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def fmt(name: str, secs: list[float], n: int, unit: str = "img/s") -> str:
    """One line of a report: best and median rate of a pipeline."""
    return (f"  {name:44s} {n / min(secs):10,.0f} {unit} (best of {len(secs)})  "
            f"{n / statistics.median(secs):10,.0f} {unit} (median)")
