"""Progress and interrupt protocol of every long engine function. Entry point: :class:`Progress`.

Every long engine function (fitting, stereo, priors, rendering a path, samplers, trainers) takes ONE keyword,
``progress: Progress | None = None``, and calls two methods on it:

* ``progress.update(done, total, *, stage=None, loss=None, preview=None)`` after a unit of work:
  ``done`` of ``total`` units of the current ``stage`` (a short name such as "stereo", "fit", "denoise"; nested
  functions report their own stage, so ``total`` may change between calls), ``loss`` a float when the loop
  optimises something, ``preview`` an image [H, W, 3] float 0..1 (a rendered frame) when one is at hand.
* ``progress.check_interrupt()`` before each unit of work: returns, or raises to abort. The engine raises
  :class:`Interrupted` itself nowhere; a host raises whatever its cancel exception is (ComfyUI's
  ``InterruptProcessingException``), and the engine lets it propagate unchanged.

:class:`Progress` itself is the no-op default (``None`` means the same); :class:`TqdmProgress` is the console
default of the CLI and demo. The ComfyUI adapter (``nodes/host.py``) implements it once on the host's progress
bar and interrupt flag. This module imports nothing but the standard library and tqdm (optional).
"""
from __future__ import annotations

from typing import Any


class Interrupted(BaseException):
    """The user asked to stop. A ``BaseException`` (like ``KeyboardInterrupt`` and ComfyUI's
    ``InterruptProcessingException``), so an ``except Exception`` inside a loop does not swallow it."""


class Progress:
    """No-op progress/interrupt sink; subclass it and override :meth:`update` and/or :meth:`check_interrupt`."""

    def update(self, done: int, total: int, *, stage: str | None = None, loss: float | None = None,
               preview: Any = None) -> None:
        """``done`` of ``total`` units of ``stage`` finished; ``loss`` float or None; ``preview`` [H,W,3] 0..1 or None."""

    def check_interrupt(self) -> None:
        """Return to go on, raise (:class:`Interrupted` or a host's cancel exception) to abort."""


NO_PROGRESS = Progress()
"""The shared no-op instance."""


def as_progress(progress: Progress | None) -> Progress:
    """``progress`` itself, or :data:`NO_PROGRESS` for None (so loops call it unconditionally)."""
    return NO_PROGRESS if progress is None else progress


class TqdmProgress(Progress):
    """A console bar per stage (tqdm; silent when tqdm is missing); ``loss`` is shown as the bar's postfix.

    ``desc`` prefixes the stage in the bar's label; ``enabled=False`` makes it silent (e.g. non-zero DDP ranks).
    Never interrupts (Ctrl-C raises ``KeyboardInterrupt`` anyway).
    """

    def __init__(self, desc: str = "", enabled: bool = True):
        self.desc, self.enabled = desc, enabled
        self._bar, self._key = None, None

    def update(self, done, total, *, stage=None, loss=None, preview=None) -> None:
        if not self.enabled:
            return
        key = (stage, int(total))
        if self._bar is None or key != self._key:
            self.close()
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover
                self.enabled = False
                return
            label = ": ".join(s for s in (self.desc, stage) if s)
            self._bar, self._key = tqdm(total=int(total), desc=label or None), key
        self._bar.update(int(done) - self._bar.n)
        if loss is not None:
            self._bar.set_postfix(loss=f"{float(loss):.5g}", refresh=False)
        if int(done) >= int(total):
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._key = None, None
