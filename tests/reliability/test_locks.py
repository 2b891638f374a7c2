"""One run at a time per directory (issue 19, case 3).

Before the fix two ``iit run`` on one directory both ran every unfinished step, and with different
configs one deleted the other's step folder mid-step while both reported success. Now ``run_study``
and ``train_variant`` hold ``DIR/.iit.lock``: a second run stops at once naming the owner (pid, host,
age) and the lock file; a lock left by a killed run is taken over; the lock goes when the run ends,
whether it succeeded or failed.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from implicit_it.app.cli import app
from implicit_it.app.config import parse_config
from implicit_it.app.pipeline import StageFailed, StudyPlan, run_study
from implicit_it.app.pipeline.steps import Step
from implicit_it.locks import LOCK_NAME, DirectoryLocked, acquire, directory_lock
from implicit_it.training import Variant, train_variant
from tests.helpers import study_config_dict
from tests.reliability.runs import REPO, train_config_dict

HOLD = (
    "import sys, time\n"
    "from implicit_it.locks import acquire\n"
    "lock = acquire(sys.argv[1], what='iit run')\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path/run``'s lock, as a first ``iit run`` would."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield run_dir, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def study(tiny_llama_dir, shared_data):
    return parse_config(study_config_dict(tiny_llama_dir, shared_data))


def _fake_plan(monkeypatch, fail: bool = False):
    """Two quick steps instead of the study's (the lock, not the stages, is under test)."""
    ran = []

    def build(self):
        self.systems = []

        def work(step):
            ran.append(step.id)
            (step.dir / "out.txt").write_text(step.id)
            if fail and step.name == "b":
                raise RuntimeError("simulated crash")
            return {}

        self.steps = [Step("fake", name, {"n": name}, work, self.run_dir / "fake" / name) for name in ("a", "b")]
        return self.steps

    monkeypatch.setattr(StudyPlan, "build", build)
    return ran


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_a_second_run_stops_naming_the_first_and_a_killed_runs_lock_is_taken_over(holder, study, monkeypatch):
    run_dir, proc = holder
    ran = _fake_plan(monkeypatch)
    with pytest.raises(DirectoryLocked) as err:
        run_study(study, run_dir, show_progress=False)
    message = str(err.value)
    assert f"pid {proc.pid} on host {socket.gethostname()}" in message and str(run_dir / LOCK_NAME) in message
    assert "\n" not in message and ran == []  # nothing ran, nothing was deleted
    proc.send_signal(signal.SIGKILL)  # the first run dies without cleaning up: its lock file stays
    proc.wait()
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == proc.pid
    outcome = run_study(study, run_dir, show_progress=False)
    assert ran == ["fake/a", "fake/b"] and set(outcome.statuses.values()) == {"ran"}
    assert not (run_dir / LOCK_NAME).exists()  # released after success


def test_the_cli_refuses_with_one_line(holder, study, tmp_path):
    run_dir, proc = holder
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study.model_dump(mode="json")))
    res = CliRunner().invoke(app, ["run", str(config), "--out", str(run_dir), "-q"])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"pid {proc.pid}" in errors[0] and str(run_dir / LOCK_NAME) in errors[0]
    assert "Traceback" not in res.output


def test_the_lock_is_released_after_a_failure(study, tmp_path, monkeypatch):
    _fake_plan(monkeypatch, fail=True)
    with pytest.raises(StageFailed, match="simulated crash"):
        run_study(study, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    acquire(tmp_path / "run").release()


def test_train_refuses_a_directory_in_use(tiny_llama_dir, shared_data, tmp_path, monkeypatch):
    import implicit_it.training.engine as engine

    monkeypatch.setattr(engine, "_prepare_model", lambda *a: pytest.fail("loaded the model of a locked run"))
    cfg = parse_config(train_config_dict(tiny_llama_dir, shared_data))
    with directory_lock(tmp_path / "out", what="training run"):
        with pytest.raises(DirectoryLocked, match=f"pid {os.getpid()}"):
            train_variant(cfg, Variant("response"), out_dir=tmp_path / "out", show_progress=False)


def test_a_stale_flock_file_is_taken_over(tmp_path):
    dead = _dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": time.time() - 60}))
    lock = acquire(tmp_path)
    assert lock.previous.pid == dead and json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_without_flock_exclusive_creation_takes_over_dead_pids_and_reports_other_hosts(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": time.time() - 60}))
    lock = acquire(tmp_path)  # a dead process of this host: taken over
    with pytest.raises(DirectoryLocked, match=f"pid {os.getpid()}"):
        acquire(tmp_path)  # held: a second taker is refused
    lock.release()
    assert not path.exists()
    path.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": time.time()}))
    with pytest.raises(DirectoryLocked, match=f"pid {os.getppid()}"):
        acquire(tmp_path)  # alive on this host
    path.write_text(json.dumps({"pid": 1234, "host": "gpu-node-7", "started": time.time() - 3 * 3600}))
    with pytest.raises(DirectoryLocked, match=r"pid 1234 on host gpu-node-7, started 3\.0 h ago.*\.iit\.lock"):
        acquire(tmp_path)  # another host: cannot tell whether it runs, so it is reported, never taken


# ---- issue 34: the lock file is never written through a link, nor taken when it is not ours ----------------------------
def test_a_lock_file_that_is_a_symlink_is_never_written_through(tmp_path):
    from implicit_it.locks import UnsafeLockFile

    thesis = tmp_path / "thesis.tex"
    thesis.write_text("\\chapter{Results}\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).symlink_to(thesis)
    with pytest.raises(UnsafeLockFile, match=r"symbolic link .*thesis\.tex"):
        acquire(run)
    assert thesis.read_text() == "\\chapter{Results}\n"
    (run / LOCK_NAME).unlink()
    (run / LOCK_NAME).symlink_to(tmp_path / "created-by-the-lock")  # a dangling link: O_CREAT would create its target
    with pytest.raises(UnsafeLockFile):
        acquire(run)
    assert not (tmp_path / "created-by-the-lock").exists()


def test_a_lock_file_that_is_a_fifo_or_another_users_is_refused_without_hanging(tmp_path):
    from implicit_it.locks import UnsafeLockFile

    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / LOCK_NAME)
    with pytest.raises(UnsafeLockFile, match="not a regular file"):
        acquire(run)
    (run / LOCK_NAME).unlink()
    if os.geteuid() == 0:  # only root can give a file away
        (run / LOCK_NAME).write_text("{}")
        os.chown(run / LOCK_NAME, 12345, 12345)
        with pytest.raises(UnsafeLockFile, match="another user"):
            acquire(run)


def test_iit_run_names_a_symlinked_lock_in_one_line(tmp_path, tiny_llama_dir, shared_data):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study_config_dict(tiny_llama_dir, shared_data)))
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "target").write_text("keep")
    (run / LOCK_NAME).symlink_to(tmp_path / "target")
    res = CliRunner().invoke(app, ["run", str(config), "--out", str(run), "-q"])
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert res.exit_code == 2 and len(errors) == 1 and "symbolic link" in errors[0] and "Traceback" not in res.output, res.output
    assert (tmp_path / "target").read_text() == "keep"
