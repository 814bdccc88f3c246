"""The one progress style: silent for short steps, one line per interval in logs, a closing line."""
from __future__ import annotations

import io

from sskt.progress import Progress, progress


def test_a_logged_step_shows_counts_share_and_a_closing_line() -> None:
    out = io.StringIO()
    with Progress(4, "decoding images", "files", quiet_s=0, log_every_s=0, stream=out) as bar:
        for _ in range(4):
            bar.update()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("sskt: decoding images: 1/4 files (25%), about") and "left" in lines[0]
    assert lines[-1].startswith("sskt: decoding images: 4 done in") and "\r" not in out.getvalue()


def test_short_steps_and_switched_off_progress_print_nothing(monkeypatch) -> None:
    out = io.StringIO()
    assert list(progress(range(3), 3, "quick")) == [0, 1, 2]
    with Progress(3, "quick", stream=out) as bar:  # ends within its quiet time
        bar.update(3)
    monkeypatch.setenv("SSKT_PROGRESS", "0")
    with Progress(3, "off", quiet_s=0, log_every_s=0, stream=out) as bar:
        bar.update(3)
    assert out.getvalue() == ""
