import io
import logging

from mt.tracking import Progress


def test_progress_bar_shows_steps_loss_and_tokens_per_second():
    out = io.StringIO()
    with Progress(total=10, initial=2, show=True, file=out).active() as progress:
        progress.step(loss=4.25, tokens_per_s=1234.0)
        progress.bar.refresh()
    drawn = out.getvalue()
    assert "3/10" in drawn  # resumed at step 2, one step done
    assert "loss 4.250" in drawn and "1,234 tgt tok/s" in drawn


def test_progress_bar_is_silent_when_not_shown_and_log_lines_still_pass():
    out, logged = io.StringIO(), io.StringIO()
    logger = logging.getLogger("mt.test_tracking")
    handler = logging.StreamHandler(logged)
    logging.getLogger("mt").addHandler(handler)
    try:
        with Progress(total=None, initial=0, show=False, file=out).active() as progress:
            progress.step(loss=1.0, tokens_per_s=10.0)
            logger.warning("a log line")
    finally:
        logging.getLogger("mt").removeHandler(handler)
    assert out.getvalue() == ""
    assert "a log line" in logged.getvalue()
