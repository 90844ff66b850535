"""Messages, progress bars and repeated warnings (sdzero.logs)."""

import warnings

from sdzero import logs


def test_progress_writes_plain_lines_when_stderr_is_not_a_terminal(capsys):
    bar = logs.progress(3, "drafts", unit="seq")
    for _ in range(3):
        bar.update(1)
    bar.set_postfix(loss="0.5")
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.count("drafts: 3/3 seq") == 1  # the last update always writes its line, once
    bar = logs.progress(10, "steps", unit="step")
    bar.update(4)
    bar.close()  # stopped early: closing says where
    assert "steps: 4/10 step" in capsys.readouterr().err


def test_messages_go_to_stdout_and_the_run_folders_log_file(tmp_path, capsys):
    with logs.log_file(tmp_path / "compare") as outer, logs.log_file(tmp_path / "compare" / "seed-0") as inner:
        logs.info("[run] collect ...")
        with logs.log_file(tmp_path / "compare"):  # the same folder again: no line written twice
            logs.info("[run] srt ...")
    logs.info("[run] after")  # outside: stdout only
    assert capsys.readouterr().out.count("[run]") == 3
    assert outer == (tmp_path / "compare" / "sdzero.log").resolve()
    for path in (outer, inner):
        text = path.read_text()
        assert text.count("[run] collect ...") == text.count("[run] srt ...") == 1 and "after" not in text


def test_warnings_that_repeat_every_call_are_shown_once():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        logs.setup()
        for _ in range(5):
            warnings.warn("`past_key_values` is deprecated and will be removed", FutureWarning)
            warnings.warn("something else", UserWarning)
    assert sum("past_key_values" in str(w.message) for w in seen) == 1
    assert sum("something else" in str(w.message) for w in seen) == 5
