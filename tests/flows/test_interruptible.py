"""``interruptible`` and ``exclusive`` on their own: small real processes, no flow."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from flows.files.locks import LockBusy, exclusive, read_owner
from flows.runtime.interrupts import interruptible
from tests.helpers import hears_ctrl_c

ROOT = Path(__file__).resolve().parents[2]

# A command's work: a thread that waits, a child Python process that would print a traceback if
# Ctrl-C reached it, and a grandchild; it says when all are running.
RUN = textwrap.dedent("""
    import subprocess, sys, time
    from flows.runtime.interrupts import interruptible

    def work():
        child = subprocess.Popen([sys.executable, "-c",
            "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            "time.sleep(120)"])
        print("running", child.pid, flush=True)
        time.sleep(120)

    interruptible(sys.argv[1], work)
""")


def children_of(pid: int, count: int, timeout: float = 60) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(pid).children(recursive=True)
        if len(children) >= count:
            return children
        time.sleep(0.05)
    pytest.fail(f"{pid} did not start {count} processes")


@pytest.mark.parametrize("command, signum, line", [
    ("retrain", signal.SIGINT,
     "dsqnet retrain: interrupted; rerun the same command to resume: training continues from its last checkpoint"),
    ("monitor", signal.SIGTERM,
     "dsqnet monitor: stopped by SIGTERM; rerun the same command to resume: the pairs already recorded are kept"),
])
def test_a_signal_ends_the_command_its_thread_and_every_process_it_started(tmp_path, command, signum, line):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([sys.executable, "-c", RUN, command], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, start_new_session=True, text=True, preexec_fn=hears_ctrl_c)
    try:
        assert run.stdout.readline().startswith("running")
        started = children_of(run.pid, 2)
        os.killpg(run.pid, signum)  # the whole group, as a terminal's Ctrl-C
        stdout, stderr = run.communicate(timeout=5)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 128 + signum
    assert stderr == line + "\n"  # the children heard nothing: no KeyboardInterrupt traceback of theirs
    _, left = psutil.wait_procs(started, timeout=2)
    assert not left


def test_a_command_started_with_ctrl_c_ignored_goes_on_ignoring_it(tmp_path):
    """A script's background job (``dsqnet monitor ... &``) and nohup start a command with SIGINT
    ignored; the command's own handler used to override that, and a Ctrl-C meant for the script
    stopped it. SIGTERM still stops it cleanly."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([sys.executable, "-c", RUN, "monitor"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, start_new_session=True, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert run.stdout.readline().startswith("running")
        children_of(run.pid, 2)
        os.killpg(run.pid, signal.SIGINT)
        time.sleep(1.0)
        assert run.poll() is None, run.communicate()
        os.killpg(run.pid, signal.SIGTERM)
        _, stderr = run.communicate(timeout=5)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 128 + signal.SIGTERM
    assert stderr == "dsqnet monitor: stopped by SIGTERM; rerun the same command to resume: the pairs already " \
                     "recorded are kept\n"


def test_without_a_signal_the_result_and_the_errors_are_the_work_s_own():
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    assert interruptible("detect", lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        interruptible("detect", lambda: 1 / 0)
    assert {signum: signal.getsignal(signum) for signum in before} == before  # the handlers are put back


HOLD = textwrap.dedent("""
    import sys, time
    from flows.files.locks import exclusive
    with exclusive(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


def test_a_held_lock_names_its_holder_and_dies_with_it(tmp_path):
    lock = tmp_path / "work.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(LockBusy) as busy:
            with exclusive(lock, wait=0.2):
                pass
        assert busy.value.owner.pid == holder.pid and busy.value.owner.host == socket.gethostname()
        assert busy.value.held_by().startswith(f"another dsqnet run (pid {holder.pid} on {socket.gethostname()}, "
                                               "started ")
    finally:
        holder.kill()
        holder.wait()
    with exclusive(lock) as me:  # the kernel dropped the lock of the killed holder
        assert read_owner(lock) == me


def test_two_holders_in_one_process_exclude_each_other(tmp_path):
    with exclusive(tmp_path / "a.lock"):
        with pytest.raises(LockBusy):
            with exclusive(tmp_path / "a.lock"):
                pass
        with exclusive(tmp_path / "b.lock"):  # another lock is another matter
            pass


def test_ctrl_c_during_training_ends_dsqnet_train_in_one_line_that_says_how_to_resume(tmp_path):
    """The real command: Python's KeyboardInterrupt traceback used to be all that ``dsqnet train`` said."""
    from tests.dsqnet.datasets_helpers import generic_dataset

    data, work = generic_dataset(tmp_path / "data", n=4, size=64), tmp_path / "work"
    dsqnet = str(Path(sys.executable).parent / "dsqnet")
    run = subprocess.Popen([dsqnet, "train", "--config", "cpu-small", "--data-root", str(data), "--work-dir", str(work),
                            "--max-iters", "100000", "--device", "cpu", "--num-workers", "0"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True,
                           preexec_fn=hears_ctrl_c)
    try:
        deadline = time.monotonic() + 120
        while not (work / "log.jsonl").is_file():  # the training loop is under way
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-3000:]
            time.sleep(0.1)
        os.killpg(run.pid, signal.SIGINT)
        stdout, stderr = run.communicate(timeout=5)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130
    assert "Traceback" not in stdout + stderr, stderr[-3000:]
    assert stderr.splitlines()[-1] == ("dsqnet train: interrupted; rerun it with --resume to go on from its last "
                                       "checkpoint (train_state.pt in its work folder)")
