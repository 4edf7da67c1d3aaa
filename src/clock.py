"""The run's length, as one object that remembers who read it.

A part whose steps depend on how long the run is (a timestep rule over the fraction of the run
done, SIM's switch to VSD, NeRF's resolution milestones) learns ``trainer.max_steps`` only from a
``RunLength`` handle, which the builder passes to every part whose constructor names a
``run_length`` argument (src/build.py). Reading it records the reader in the run's ``Clock``:

    def __init__(self, ..., vsd_after=None, run_length: RunLength | None = None):
        self.vsd_from = vsd_after * run_length.steps("vsd_after")   # read by guidance.vsd_after

The trainer writes ``Clock.readers`` with the run (run_info.json, every checkpoint), and a higher
``trainer.max_steps`` continues a finished run only when that record names no reader
(src/rundir.py: check_same_run). A part cannot depend on the run length without the check
knowing: there is no other way to learn it, and no flag to declare apart from the read.

The trainer's own uses (where the loop stops, the progress bar, ``val_every=auto``) read
``Clock.max_steps``: they change no step's result.
"""

from __future__ import annotations


class Clock:
    """``max_steps``: where the run stops (the trainer's); ``readers``: the parts that read it."""

    def __init__(self, max_steps: int):
        self.max_steps = int(max_steps)
        self._readers: list[str] = []

    def run_length(self, group: str, part: str) -> RunLength:
        """The handle of the part built from config group ``group`` (its class name ``part``)."""
        return RunLength(self, group, part)

    @property
    def readers(self) -> list[str]:
        """Who read the run length, in the order of their first read (e.g. ['guidance.vsd_after'])."""
        return list(self._readers)

    def _read(self, who: str) -> int:
        if who not in self._readers:
            self._readers.append(who)
        return self.max_steps


class RunLength:
    """One part's handle on ``trainer.max_steps``; every read is recorded by its clock."""

    def __init__(self, clock: Clock, group: str, part: str):
        self._clock, self._group, self._part = clock, group, part

    def steps(self, key: str | None = None) -> int:
        """``trainer.max_steps``, read because of the part's config ``key`` (recorded as
        ``<group>.<key>``, e.g. ``guidance.vsd_after``) or by the part as such (recorded as
        ``<group>=<class>``, e.g. ``schedule=LinearDecreasing``)."""
        return self._clock._read(f"{self._group}.{key}" if key else f"{self._group}={self._part}")


def run_length(max_steps: int, group: str = "part", part: str = "Part") -> RunLength:
    """A handle on a clock of its own: for building one part outside a run (tests, scripts)."""
    return Clock(max_steps).run_length(group, part)
