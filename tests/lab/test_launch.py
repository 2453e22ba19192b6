"""Launchers (``launcher: local | ray | slurm``): a bench's runs and a search's trials as tasks of Ray (a
local Ray, started once for the session) and of submitit's local executor (SLURM's jobs, on this
machine), with the scores of the local launcher; a coordinator killed mid-way and started again
finishes with every run trained once; a failing run is reported with its log, never sent again. The
coordinator's loop itself (ordering, retries, following a live task) is tested with a made-up engine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench_helpers import make_sentiment, write_spec
from peftlab.errors import ConfigError
from peftlab.files import holder
from peftlab.lab.bench.run import BenchError, run_bench
from peftlab.lab.child import Job
from peftlab.lab.cli import main
from peftlab.lab.launch.base import run_all

TWO = "  - {label: LoRA, methods: [{name: lora, r: 4}]}\n  - {name: ia3}\n"
ONE_TASK = "  - {task: {name: classify, path: SENTIMENT}, label: sentiment}\n"


def _spec(tmp: Path, methods: str = TWO, **kw) -> Path:
    """A 2-method × 2-seed bench on the 12-row sentiment task (tiny T5, 2 steps)."""
    sentiment = make_sentiment(tmp / "sentiment")
    return write_spec(tmp, methods=methods, tasks=ONE_TASK.replace("SENTIMENT", str(sentiment)), **kw)


def _scores(out: Path, dirs=None) -> dict:
    """What a run scored, less its timings: equal across launchers."""
    index = json.loads((out / "bench.json").read_text())
    scores = {}
    for r in index["runs"]:
        if dirs is None or r["dir"] in dirs:
            m = json.loads((out / r["dir"] / "metrics.json").read_text())
            tasks = {t: {k: v for k, v in s.items() if k != "eval_seconds"} for t, s in m["task_metrics"].items()}
            scores[r["dir"]] = (tasks, m["eval_loss"], m["final_loss"], m["trainable_params"], m["steps"])
    return scores


def _record(out: Path, rel: str) -> list:
    return json.loads((out / "launch" / f"{rel.replace('/', '--')}.json").read_text())["attempts"]


def _trained_once(run: Path, steps: int) -> None:
    """Started once (never set aside and begun again), each logged step trained once, all of them."""
    assert not list(run.parent.glob(f"{run.name}.*")), "a run was set aside and started again"
    logged = [row["step"] for row in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())
              if "loss" in row]
    assert logged == sorted(set(logged)) and logged[-1] == steps


def _coordinator(spec: Path, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "peftlab", "bench", str(spec), "--out", str(out), "--quiet",
                             "--no-report", *args], env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the bench finished before it could be killed"


def _complete(out: Path) -> set:
    return {p.parent for p in out.glob("*/*/*/status.json") if json.loads(p.read_text() or "{}").get("state")
            == "complete"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The bench's scores on the local launcher (in this process: one thread, as each launched run has)."""
    tmp = tmp_path_factory.mktemp("local")
    run_bench(_spec(tmp, extra="isolate: false\n"), tmp / "out", progress=False, report=False)
    return _scores(tmp / "out")


@pytest.fixture(scope="session")
def ray_address():
    """One small local Ray for the session: 2 CPUs, no dashboard, a small object store."""
    ray = pytest.importorskip("ray")
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.update({k: v})


# --------------------------------------------------------------------------------------------- Ray


def test_a_bench_through_ray_scores_as_locally_and_reports_a_failing_run_with_its_log(tmp_path, ray_address,
                                                                                       reference):
    broken = "  - {label: broken, methods: [{name: lora, r: 4}], overrides: {data.task.path: /nowhere/data}}\n"
    spec = _spec(tmp_path, methods=TWO + broken, extra="launcher: ray\nray: {cpus: 1}\n")
    out = tmp_path / "out"
    with pytest.raises(BenchError, match=r"2 of 6 runs did not finish .*/nowhere/data.*\(log: .*broken--seed0.log\)"):
        run_bench(spec, out, progress=False, report=False)
    index = json.loads((out / "bench.json").read_text())
    assert index["launcher"]["name"] == "ray" and index["launcher"]["cpus"] == 1
    assert _scores(out, set(reference)) == reference
    for r in index["runs"]:
        assert len(_record(out, r["dir"])) == 1  # each sent once: a failed run is reported, not sent again
        if "broken" in r["dir"]:
            assert r["state"] == "failed" and "/nowhere/data" in r["error"]
            assert "/nowhere/data" in Path(r["log"]).read_text()  # the run's own output, kept
        else:
            assert r["state"] == "complete" and r["how"] == "trained"


def test_a_killed_bench_on_ray_resumes_its_runs_from_their_checkpoints(tmp_path, ray_address):
    """Ray ends a dead driver's tasks (and their run processes); the same command resumes each run."""
    spec = _spec(tmp_path, methods="  - {label: LoRA, methods: [{name: lora, r: 4}]}\n", budget="{steps: 200}",
                 extra="launcher: ray\nray: {cpus: 1}\n")
    spec.write_text(spec.read_text().replace("  train.log_every: 1\n",
                                             "  train.log_every: 10\n  train.checkpoint_every: 10\n"))
    out = tmp_path / "out"
    proc = _coordinator(spec, out, "--set", f"ray.address={ray_address}")
    _kill_when(proc, lambda: bool(list(out.glob("*/*/*/checkpoints/step-*/state.json"))) or bool(_complete(out)))
    assert len(_complete(out)) < 2, "every run finished before the bench was killed"
    deadline = time.time() + 60  # Ray ends the dead driver's tasks, and their run processes with them
    while time.time() < deadline and any(holder(run) is not None for run in out.glob("*/*/seed*")):
        time.sleep(0.1)
    kept = {run.relative_to(out).as_posix(): max([int(c.parent.name[5:]) for c in
                                                  run.glob("checkpoints/step-*/state.json")], default=0)
            for run in out.glob("*/*/seed*") if run not in _complete(out)}
    assert max(kept.values()) >= 10
    index = run_bench(spec, out, overrides=(f"ray.address={ray_address}",), progress=False, report=False)
    how = {r["dir"]: r["how"] for r in index["runs"]}
    assert set(how.values()) <= {"resumed", "trained", "reused"}
    for rel, h in how.items():
        _trained_once(out / rel, 200)
        if rel in kept:  # begun when the bench was killed: continued from its last checkpoint, not redone
            assert h == "resumed" and json.loads((out / rel / "status.json").read_text())["resumed_from_step"] == \
                kept[rel]
        if h != "reused":  # the killed bench's task is gone; this one is the second and last
            assert [a["state"] for a in _record(out, rel)] == ["gone", "complete"]


# ----------------------------------------------------------------------------- SLURM (submitit local)


def test_a_bench_through_submitit_outlives_its_killed_coordinator_and_trains_each_run_once(tmp_path, reference):
    """The jobs go on without the coordinator; the restarted one follows them (no job twice) and gets
    the local launcher's scores."""
    pytest.importorskip("submitit")
    spec = _spec(tmp_path, extra="launcher: slurm\nslurm: {cluster: local, cpus: 1, time: 20}\n")
    out = tmp_path / "out"
    proc = _coordinator(spec, out)
    _kill_when(proc, lambda: len(list((out / "launch").glob("*.json"))) == 4)
    assert len(_complete(out)) < 4
    index = run_bench(spec, out, progress=False, report=False)
    assert {r["how"] for r in index["runs"]} <= {"trained", "reused"}  # followed, or done meanwhile: never again
    for r in index["runs"]:
        assert len(_record(out, r["dir"])) == 1  # one job per run, over both coordinators
        assert "resumed_from_step" not in json.loads((out / r["dir"] / "status.json").read_text())
        _trained_once(out / r["dir"], 2)
    assert _scores(out) == reference


def test_search_trials_run_as_tasks_side_by_side(tmp_path):
    """``parallel: 2`` through SLURM (submitit local): two trials in flight, each scored from its run."""
    pytest.importorskip("submitit")
    from bench_helpers import TINY_OVERRIDES
    from tiny_runs import SMOKE

    data = make_sentiment(tmp_path / "sentiment")
    spec = tmp_path / "search.yaml"
    spec.write_text(f"base: {SMOKE}\n{TINY_OVERRIDES}task: {{name: classify, path: {data}}}\n"
                    "space:\n  - {name: lora, choose: {r: [2, 4, 8]}, optional: false}\n"
                    "trials: 2\nbudget: {steps: 2}\nparallel: 2\nslurm: {cluster: local, cpus: 1}\n")
    out = tmp_path / "out"
    assert main(["search", str(spec), "--out", str(out), "--quiet", "--launcher", "slurm"]) == 0
    summary = json.loads((out / "pareto.json").read_text())
    assert summary["finished"] == 2
    trained = [t for t in summary["trials"] if t["run_dir"]]
    assert trained and all(t["state"] == "complete" for t in summary["trials"])
    for t in trained:
        m = json.loads((out / t["run_dir"] / "metrics.json").read_text())
        assert m["test_split"] == "valid" and t["score"] == m["task_metrics"]["sentiment"]["accuracy"]
    attempts = [_record(out, t["run_dir"]) for t in trained]
    assert len(attempts) == 2 and all(len(a) == 1 for a in attempts)  # the seed's first two draws differ
    assert max(a[0]["submitted"] for a in attempts) <= min(a[0]["ended"] for a in attempts)  # both in flight


def test_a_trial_stopped_mid_run_is_retried_in_its_own_run_directory(tmp_path):
    """A search killed with a trial in flight: the next one retries its choices in the directory the
    trial had (resuming it there), never in a new one."""
    import optuna

    from bench_helpers import TINY_OVERRIDES
    from peftlab.lab.run import train_run
    from peftlab.lab.search.spec import load_search, trial_config
    from tiny_runs import SMOKE

    data = make_sentiment(tmp_path / "sentiment")
    spec = tmp_path / "search.yaml"
    spec.write_text(f"base: {SMOKE}\n{TINY_OVERRIDES}task: {{name: classify, path: {data}}}\n"
                    "space:\n  - {name: lora, choose: {r: [2, 4]}, optional: false}\ntrials: 1\nbudget: {steps: 2}\n")
    out = tmp_path / "out"
    assert main(["search", str(spec), "--out", str(out), "--quiet"]) == 0
    study = optuna.load_study(study_name="peftlab-search", storage=f"sqlite:///{out / 'study.db'}")
    other = 6 - study.trials[0].params["0.lora.r"]  # the rank trial 0 did not draw
    study.enqueue_trial({"0.lora.r": other})
    stopped = study.ask()  # trial 1, in flight when its search was killed: its run begun, not finished
    methods = [{"name": "lora", "r": other}]
    for k, v in {"methods": methods, "run_dir": "trials/0001", "task": "sentiment", "metric": "accuracy"}.items():
        stopped.set_user_attr(k, v)
    run = out / "trials" / "0001"
    train_run(trial_config(load_search(spec), methods), run, progress=False)
    for name in ("metrics.json", "trained.json"):
        (run / name).unlink()
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
    assert main(["search", str(spec), "--out", str(out), "--quiet", "trials=2"]) == 0
    summary = json.loads((out / "pareto.json").read_text())
    retry = next(t for t in summary["trials"] if t["number"] == 2)
    assert retry["state"] == "complete" and retry["run_dir"] == "trials/0001" and retry["methods"] == methods
    assert not (out / "trials" / "0002").exists()
    assert json.loads((run / "status.json").read_text())["resumed_from_step"] == 0  # resumed there


# ------------------------------------------------------------------------ the coordinator's loop


class Fake:
    """A made-up engine: ``script[name]`` lists the outcomes of a job's successive tasks."""

    name, poll_seconds, dies_with_coordinator = "fake", 0.0, False

    def __init__(self, script: dict, capacity=None, live=(), interrupt=False):
        self.script, self.capacity, self.live, self.interrupt = script, capacity, set(live), interrupt
        self.sent, self.cancelled = [], []

    def submit(self, jobs):
        self.sent += [j.name for j in jobs]
        return [(j.name, self.sent.count(j.name)) for j in jobs]

    def poll(self, handle):
        if self.interrupt:  # Ctrl-C while the coordinator follows its tasks
            raise KeyboardInterrupt
        return True

    def outcome(self, handle):
        return self.script[handle[0]].pop(0)

    def cancel(self, handle):
        self.cancelled.append(handle)

    def record(self, handle):
        return {"engine": self.name, "id": f"{handle[0]}#{handle[1]}"}

    def reattach(self, record):
        return (record["id"].split("#")[0], 0) if record["id"] in self.live else None

    def close(self):
        pass


def _jobs(tmp: Path, *specs) -> list:
    return [Job(name, "m", [], tmp / name, name=name, after=tuple(after)) for name, after in specs]


def test_jobs_start_after_theirs_within_capacity_and_a_lost_task_is_sent_again_only_so_often(tmp_path):
    ok = {"state": "complete"}
    lost = {"state": "failed", "lost": True, "error": "node died", "log": "x.log"}
    fake = Fake({"tune": [ok], "a": [lost, ok], "b": [lost, lost], "c": [{"state": "failed", "error": "bad"}]},
                capacity=1)
    ended = []
    run_all(fake, _jobs(tmp_path, ("a", ["tune"]), ("tune", []), ("b", []), ("c", [])),
            lambda job, outcome: ended.append((job.name, outcome["state"])), tmp_path / "launch", retries=1)
    assert fake.sent[0] == "tune" and fake.sent.index("a") > 0  # after the run it waits for
    assert sorted(fake.sent) == ["a", "a", "b", "b", "c", "tune"]  # lost: once more; failed: never again
    assert sorted(ended) == [("a", "complete"), ("b", "failed"), ("c", "failed"), ("tune", "complete")]
    assert [a["state"] for a in _record(tmp_path, "b")] == ["failed", "failed"] and len(_record(tmp_path, "c")) == 1


def test_a_task_an_earlier_coordinator_started_is_followed_not_sent_again(tmp_path):
    first = Fake({"a": [], "b": []}, interrupt=True)
    with pytest.raises(KeyboardInterrupt):  # the coordinator stops with both tasks in flight
        run_all(first, _jobs(tmp_path, ("a", []), ("b", [])), lambda *a: None, tmp_path / "launch")
    assert first.cancelled == []  # a cluster's jobs go on without it
    again = Fake({"a": [{"state": "complete"}], "b": [{"state": "complete"}]}, live={"a#1"})  # b's task is gone
    run_all(again, _jobs(tmp_path, ("a", []), ("b", [])), lambda *a: None, tmp_path / "launch")
    assert again.sent == ["b"]
    assert [a["state"] for a in _record(tmp_path, "a")] == ["complete"]
    assert [a["state"] for a in _record(tmp_path, "b")] == ["gone", "complete"]


def test_choosing_an_engine_that_is_not_installed_says_which_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find(name, *a))
    spec = _spec(tmp_path, extra="launcher: ray\n")
    with pytest.raises(ConfigError, match=r"bench.yaml:\d+: launcher: ray needs ray, .*: pip install 'peftlab\[ray\]'"):
        from peftlab.lab.bench.plan import load_bench

        load_bench(spec)
    spec = _spec(tmp_path)
    assert main(["bench", str(spec), "--out", str(tmp_path / "o"), "--launcher", "ray"]) == 2
    assert "pip install 'peftlab[ray]'" in capsys.readouterr().err
    if shutil.which("sbatch") is None:  # no cluster here: said in one line, before any run
        assert main(["bench", str(spec), "--out", str(tmp_path / "o"), "--launcher", "slurm"]) == 2
        err = capsys.readouterr().err
        assert "launcher: slurm: no sbatch on this machine" in err or "pip install 'peftlab[slurm]'" in err
