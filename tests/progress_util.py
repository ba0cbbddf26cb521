"""A recording stub of the engine's progress protocol (vscene_engine.core.runtime.Progress) for tests."""
from vscene_engine.core.runtime import Interrupted, Progress


class Recorder(Progress):
    """Records every ``update`` as (stage, done, total, loss, preview shape or None) and counts ``check_interrupt``
    calls; raises ``exc`` from the check after ``stop_after`` calls (None: never)."""

    def __init__(self, stop_after: int | None = None, exc=Interrupted):
        self.updates, self.checks, self.stop_after, self.exc = [], 0, stop_after, exc

    def update(self, done, total, *, stage=None, loss=None, preview=None):
        self.updates.append((stage, done, total, loss, None if preview is None else tuple(preview.shape)))

    def check_interrupt(self):
        self.checks += 1
        if self.stop_after is not None and self.checks > self.stop_after:
            raise self.exc("stop requested by the test")
