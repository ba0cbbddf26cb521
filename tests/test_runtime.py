"""vscene_engine.core.runtime: the progress/interrupt protocol of every long engine function."""
import io

import pytest

from vscene_engine.core import runtime
from progress_util import Recorder  # noqa: E402


def test_no_progress_defaults():
    assert runtime.as_progress(None) is runtime.NO_PROGRESS
    rec = Recorder()
    assert runtime.as_progress(rec) is rec
    runtime.NO_PROGRESS.update(1, 2, stage="x", loss=0.1, preview=None)
    runtime.NO_PROGRESS.check_interrupt()


def test_interrupted_is_a_base_exception():
    assert issubclass(runtime.Interrupted, BaseException) and not issubclass(runtime.Interrupted, Exception)
    with pytest.raises(runtime.Interrupted):
        try:
            Recorder(stop_after=0).check_interrupt()
        except Exception:  # pragma: no cover - must not catch it
            pytest.fail("Interrupted was caught by 'except Exception'")


def test_tqdm_progress_one_bar_per_stage(monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    out = io.StringIO()
    made = []
    real = tqdm.tqdm

    def fake(*a, **k):
        bar = real(*a, file=out, **k)
        made.append(bar)
        return bar

    monkeypatch.setattr(tqdm, "tqdm", fake)
    p = runtime.TqdmProgress("demo")
    for i in range(1, 4):
        p.update(i, 3, stage="stereo")
    p.update(1, 5, stage="render", loss=0.25)
    p.update(5, 5, stage="render")
    assert [b.total for b in made] == [3, 5] and [b.n for b in made] == [3, 5]
    assert "demo: stereo" in out.getvalue() and "demo: render" in out.getvalue() and "loss=0.25" in out.getvalue()
    quiet = runtime.TqdmProgress(enabled=False)
    quiet.update(1, 2)
    assert len(made) == 2
