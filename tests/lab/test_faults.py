"""Fault injection: a kill between a checkpoint's
tensor files and its JSON, a full disk while saving, a read-only run directory, two processes on
one run and two comparisons into one --out, SIGTERM. Each: nothing already written is lost, and
the one-line message says what to do. Runs are tiny (tests/tiny_runs.py)."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from peftlab.lab.cli import main
from tiny_runs import SMOKE, losses, make_data, snapshot, status, tiny_args, train

STEPS = ["train.max_steps=6", "train.checkpoint_every=2", "train.lr=0.02"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data") / "c2d")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The same run, never interrupted: the loss curve every recovered run must follow."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    assert train(out, data, *STEPS) == 0
    return out


def assert_same_run(run: Path, reference: Path) -> None:
    assert status(run)["state"] == "complete"
    a, b = losses(reference), losses(run)
    assert sorted(b) == list(range(1, 7))
    assert [b[s] for s in range(1, 7)] == pytest.approx([a[s] for s in range(1, 7)], rel=1e-4)
    m_ref, m = (json.loads((r / "metrics.json").read_text()) for r in (reference, run))
    assert m["final_loss"] == pytest.approx(m_ref["final_loss"], rel=1e-4) and m["steps"] == 6


def _child_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))


# ----------------------------------------------------------------------- a kill mid-checkpoint

_KILL_BETWEEN_TENSORS_AND_JSON = r"""
import os, signal, sys
import safetensors.torch as st
real = st.save_file
def save_file(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)
    if os.path.basename(str(filename)) == "optimizer.safetensors" and "step-00000004" in str(filename):
        os.kill(os.getpid(), signal.SIGKILL)  # tensor files written, state.json not yet
st.save_file = save_file
from peftlab.lab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_between_tensor_files_and_json_then_resume(tmp_path, data, reference, caplog):
    run = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", _KILL_BETWEEN_TENSORS_AND_JSON, "train", SMOKE, "--out", str(run),
                           "--quiet", *tiny_args(data, *STEPS)], env=_child_env(), capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpts = run / "checkpoints"
    half = [p for p in ckpts.iterdir() if p.name.startswith(".tmp-step-00000004")]
    assert half and not (half[0] / "state.json").exists()  # the kill came where it was meant to
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) == ["step-00000002"]
    assert status(run)["state"] == "running" and (run / ".peftlab.lock").exists()  # the dead owner's lock
    assert main(["eval", str(run)]) == 2  # not mistaken for finished
    with open(run / "train_log.jsonl", "a") as f:  # and a log row torn by a kill in the middle of it
        f.write('{"step": 5, "lo')

    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "taking over the lock" in caplog.text and "no longer running" in caplog.text
    assert status(run)["resumed_from_step"] == 2
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".tmp")] and not (run / ".peftlab.lock").exists()
    assert_same_run(run, reference)


def test_a_checkpoint_corrupted_in_place_is_set_aside_not_resumed_from(tmp_path, data, reference, caplog):
    """A flipped byte inside a tensor keeps the file loadable (safetensors checks only its header):
    the SHA-256 recorded in state.json tells, and the run resumes from the checkpoint before it."""
    run = tmp_path / "bitrot"
    assert train(run, data, *STEPS, "train.max_steps=4") == 0
    newest = run / "checkpoints" / "step-00000004"
    weights = newest / "trainable.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0xFF  # inside the last tensor's data
    weights.write_bytes(bytes(raw))
    status_path = run / "status.json"
    st = json.loads(status_path.read_text())
    status_path.write_text(json.dumps({**st, "state": "interrupted"}))
    for name in ("metrics.json", "trained.json"):
        (run / name).unlink(missing_ok=True)
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("max_steps: 4", "max_steps: 6"))
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "its bytes are not the ones written" in caplog.text
    assert (run / "checkpoints" / "damaged-step-00000004").is_dir()
    assert status(run)["resumed_from_step"] == 2 and status(run)["state"] == "complete"
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6


# --------------------------------------------------------------------------- a full disk


def _disk_full_on(monkeypatch, fragment: str) -> None:
    """Make safetensors' writer fail like a full disk for files whose path holds ``fragment``."""
    import safetensors.torch as st

    real = st.save_file

    def save_file(tensors, filename, metadata=None):
        if fragment in str(filename):
            with open(filename, "wb") as f:  # a partial file, as a full disk leaves one
                f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", save_file)


def test_disk_full_during_a_checkpoint(tmp_path, data, reference, monkeypatch, capsys):
    run = tmp_path / "full"
    _disk_full_on(monkeypatch, "step-00000004")
    assert train(run, data, *STEPS) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on the device" in err[0], err
    assert f"then peftlab train --resume {run} (it continues from step-00000002)" in err[0]
    st = status(run)
    assert st["state"] == "failed" and st["last_checkpoint"].endswith("step-00000002")
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000002"]  # the half one was removed
    from peftlab.train.checkpoint import read_checkpoint

    read_checkpoint(ckpts / "step-00000002")  # whole
    assert sorted(losses(run)) == [1, 2, 3, 4]  # what was logged stays

    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_run(run, reference)


def test_disk_full_while_saving_the_adapter_after_training(tmp_path, data, reference, monkeypatch, capsys):
    run = tmp_path / "full"
    _disk_full_on(monkeypatch, "peftlab_adapter")
    assert train(run, data, *STEPS) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "continues from step-00000006" in err
    assert not any((run / "adapter").iterdir())  # no half file left behind
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # nothing left to train: saves and scores
    assert_same_run(run, reference)


# ---------------------------------------------------------------------- a read-only run directory


@contextmanager
def read_only(directory: Path):
    """Make ``directory`` unwritable, for root too (chattr +i: root ignores permission bits)."""
    directory.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        directory.chmod(0o755)
        pytest.skip("running as root on a file system without chattr +i: cannot make a directory read-only")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


def test_a_read_only_run_directory(tmp_path, data, capsys):
    done = tmp_path / "done"
    assert train(done, data) == 0
    stopped = tmp_path / "stopped"
    assert train(stopped, data) == 0
    st = status(stopped)
    (stopped / "status.json").write_text(json.dumps(dict(st, state="interrupted")))  # as SIGTERM leaves it
    before = {d: snapshot(d) for d in (done, stopped)}
    with read_only(done), read_only(stopped):
        cases = [
            (["eval", str(done)], "read-only, and peftlab eval writes its predictions there; make it writable, "
                                  f"or copy it (cp -r {done} NEW) and use the copy"),
            (["train", "--resume", str(stopped), "--quiet"], "cannot write here"),
            (["train", SMOKE, "--out", str(done / "sub"), "--quiet", *tiny_args(data)], "cannot create the directory"),
            # refused for what the run holds (LoRA + alignment) before it would reach the read-only directory
            (["export", str(done), "--out", str(done / "peft")], "a peft adapter holds one method"),
        ]
        for command, words in cases:
            assert main(command) == 2, command
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and words in err[0], (command, err)
    assert {d: snapshot(d) for d in (done, stopped)} == before  # nothing lost, nothing changed


# ---------------------------------------------------------- one process per run, one per --out

_HOLD = r"""
import sys
from pathlib import Path
from peftlab.lab import rundir
rundir.acquire(Path(sys.argv[1]))
print("holding", flush=True)
sys.stdin.read()
"""


@contextmanager
def held_by_another_process(directory: Path):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(directory)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=_child_env())
    try:
        assert proc.stdout.readline().strip() == "holding"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_is_recorded_as_interrupted_and_resume_waits_for_a_live_owner(tmp_path, data, reference,
                                                                              monkeypatch, capsys, caplog):
    import peftlab.train.loop as loop

    real_writer = loop.jsonl_writer

    def writer(path):
        write = real_writer(path)

        def row(r):
            write(r)
            if r.get("step") == 3 and "loss" in r:
                os.kill(os.getpid(), signal.SIGTERM)  # what `timeout` or a scheduler sends

        return row

    run = tmp_path / "r"
    monkeypatch.setattr(loop, "jsonl_writer", writer)
    assert train(run, data, *STEPS) == 128 + signal.SIGTERM
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert f"interrupted: {run} stopped by SIGTERM; it continues from step-00000002: peftlab train --resume {run}" in err
    st = status(run)
    assert st["state"] == "interrupted" and st["last_checkpoint"].endswith("step-00000002")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler does not outlive the run

    with held_by_another_process(run) as owner:  # e.g. the first process is still running
        before = snapshot(run)
        assert main(["train", "--resume", str(run), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"in use by pid {owner.pid} on " in err and "wait for it to finish" in err
        assert snapshot(run) == before
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # its owner died: taken over
    assert "taking over the lock" in caplog.text
    assert_same_run(run, reference)


def test_ctrl_c_is_recorded_as_interrupted(tmp_path, data, monkeypatch, capsys):
    import peftlab.lab.scoring

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    run = tmp_path / "r"
    monkeypatch.setattr(peftlab.lab.scoring, "score", interrupted)
    assert train(run, data) == 130
    err = capsys.readouterr().err
    assert status(run)["state"] == "interrupted" and "its adapter is saved" in err
    # a bare Ctrl-C names its signal (it printed "stopped by ;" and "interrupted ()")
    assert f"{run} stopped by SIGINT; its adapter is saved" in err and status(run)["error"] == "interrupted (SIGINT)"
    assert status(run)["resume"] == f"peftlab train --resume {run}"
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0 and status(run)["state"] == "complete"
    # a completed run carries no advice or error from the stop before
    assert not {"resume", "last_checkpoint", "error"} & set(status(run)) and status(run)["resumed_from_step"] == 2


_COMPARE_WAITING_FOR_A_FILE = r"""
import os, sys, time
import peftlab.lab.run
real = peftlab.lab.run.train_run
def train_run(*a, **k):  # holds its --out until the test has tried a second compare
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.02)
    return real(*a, **k)
peftlab.lab.run.train_run = train_run
from peftlab.lab.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_two_trains_into_one_out_and_two_compares_into_one_out(tmp_path, data, capsys):
    from peftlab.errors import RunDirError

    run = tmp_path / "r"
    run.mkdir()
    with held_by_another_process(run) as owner:
        assert train(run, data) == 2
        assert f"in use by pid {owner.pid}" in capsys.readouterr().err
        assert os.listdir(run) == [".peftlab.lock"]  # nothing written beside the owner's lock

    cfgs = tmp_path / "cfgs"
    cfgs.mkdir()
    (cfgs / "a.yaml").write_text(Path(SMOKE).read_text())
    out, go = tmp_path / "out", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", _COMPARE_WAITING_FOR_A_FILE, str(go), "compare", str(cfgs),
                              "--out", str(out), "--quiet", *[f"--set={o}" for o in tiny_args(data)]],
                             env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not (out / ".peftlab.lock").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert first.poll() is None, first.stderr.read()[-2000:]
        from peftlab.lab.compare import compare

        with pytest.raises(RunDirError, match=f"{out}: in use by pid {first.pid} .*compare"):
            compare([cfgs], out, overrides=tiny_args(data), progress=False)
    finally:
        go.touch()
        first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()[-2000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 1 and status(out / "a")["state"] == "complete"
    assert not list(out.glob("a.incomplete-*"))  # the second compare set nothing aside


def test_compare_resumes_an_interrupted_run_instead_of_starting_again(tmp_path, data, monkeypatch, capsys):
    import peftlab.lab.scoring
    from peftlab.lab.compare import compare

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    cfgs = tmp_path / "cfgs"
    cfgs.mkdir()
    (cfgs / "a.yaml").write_text(Path(SMOKE).read_text())
    out = tmp_path / "out"
    monkeypatch.setattr(peftlab.lab.scoring, "score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compare([cfgs], out, overrides=tiny_args(data), progress=False, isolate=False)
    monkeypatch.undo()
    assert status(out / "a")["state"] == "interrupted" and not (out / ".peftlab.lock").exists()
    log = (out / "a" / "train_log.jsonl").read_text()
    rows = compare([cfgs], out, overrides=tiny_args(data), progress=False)
    assert rows[0]["steps"] == 2 and status(out / "a")["state"] == "complete"
    assert (out / "a" / "train_log.jsonl").read_text() == log  # scored, not trained again
    assert not list(out.glob("a.incomplete-*"))


def test_safetensors_own_error_for_a_full_disk_is_one_line_with_the_path(tmp_path, data, monkeypatch, capsys):
    """safetensors reports a full disk as a SafetensorError (an IoError in its text), not an OSError:
    it was a traceback naming no file."""
    import safetensors.torch as st
    from safetensors import SafetensorError

    real = st.save_file

    def save_file(tensors, filename, metadata=None):
        if "step-00000004" in str(filename):
            with open(filename, "wb") as f:
                f.write(b"\0" * 100)
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                  'message: "No space left on device" })')
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", save_file)
    run = tmp_path / "full"
    assert train(run, data, *STEPS) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on the device" in err[0] and "Traceback" not in err[0], err
    assert status(run)["state"] == "failed"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"]
