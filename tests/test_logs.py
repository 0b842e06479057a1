"""Progress bars: tqdm on a terminal; plain, rare lines where stderr is a file (a log)."""
import io
import re

import pytest
from tqdm.std import tqdm as std_tqdm

from m3d_condense.pipeline.logs import PLAIN_PROGRESS_INTERVAL_S, PlainProgress, progress_bar, setup_logging


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(autouse=True)
def _bars_on(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # conftest turns them off for the rest of the suite


def test_a_bar_writing_to_a_file_writes_a_line_per_interval_and_the_last_one():
    now = [0.0]
    log_file = io.StringIO()
    bar = progress_bar(range(10_000), desc="eval convnet3", unit="ep", file=log_file, leave=False, mininterval=1.0,
                       clock=lambda: now[0])
    assert isinstance(bar, PlainProgress)
    for _ in bar:
        now[0] += 0.125  # 1250 s in all: 10 000 refreshes of a bar, 41 intervals of 30 s
    lines = log_file.getvalue().splitlines()
    assert len(lines) == int(1250 // PLAIN_PROGRESS_INTERVAL_S) + 1, lines
    assert lines[0] == "eval convnet3:   2% 240/10000 [00:30<20:20,  8.00ep/s]"
    assert lines[-1] == "eval convnet3: 100% 10000/10000 [20:50<00:00,  8.00ep/s]"
    assert "\r" not in log_file.getvalue()


def test_a_fast_step_writes_only_its_last_line_with_the_postfix():
    log_file = io.StringIO()
    with progress_bar(total=100_000, initial=10, desc="condense (2 workers)", unit="it", file=log_file,
                      dynamic_ncols=True, mininterval=1.0) as bar:
        for _ in range(99_990):
            bar.update(1)
            bar.set_postfix(mmd2="0.0123")
    (line,) = log_file.getvalue().splitlines()
    assert re.fullmatch(r"condense \(2 workers\): 100% 100000/100000 \[00:0\d<00:00, .*it/s, mmd2=0\.0123\]", line), line


def test_on_a_terminal_it_is_a_tqdm_bar_and_tqdm_disable_turns_both_off(monkeypatch):
    terminal = _Terminal()
    with progress_bar(total=3, desc="prepare", unit="img", file=terminal) as bar:
        assert isinstance(bar, std_tqdm)
        bar.update(3)
    assert "\rprepare: 100%|" in terminal.getvalue() and "3/3" in terminal.getvalue()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    for stream in (_Terminal(), io.StringIO()):
        with progress_bar(total=3, desc="prepare", file=stream) as bar:
            bar.update(3)
        assert stream.getvalue() == ""
    with progress_bar(total=3, desc="prepare", file=terminal, progress=False) as bar:
        bar.update(3)


def test_without_a_file_the_lines_go_through_the_m3d_logger_to_stderr(capsys):
    setup_logging()  # as run, condense and evaluate do
    for _ in progress_bar(range(3), desc="reading the dataset", unit="img"):
        pass
    assert re.fullmatch(r"\[m3d\] reading the dataset: 100% 3/3 \[00:00<00:00, .*img/s\]\n", capsys.readouterr().err)
