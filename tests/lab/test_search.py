"""`peftlab search`: a 3-trial AutoPEFT-style search on tiny models finishes on CPU, resumes, and
reports its Pareto front."""

import json

import pytest

from bench_helpers import TINY_OVERRIDES, make_sentiment
from peftlab.lab.cli import main
from peftlab.errors import ConfigError
from peftlab.lab.search.run import pareto_front
from peftlab.lab.search.spec import load_search, sample
from tiny_runs import SMOKE

SPACE = """\
space:
  - {name: lora, choose: {r: [2, 4], targets: [[q, v], [q, k, v, o]]}}
  - {name: parallel, choose: {bottleneck: [4, 8]}, per_layer: bottleneck}
"""


def write_search(tmp, *, space=SPACE, trials=2, extra="max_params: 5000\n"):
    data = make_sentiment(tmp / "sentiment")
    overrides = TINY_OVERRIDES.replace("num_layers: 1, num_decoder_layers: 1", "num_layers: 2, num_decoder_layers: 2")
    spec = tmp / "search.yaml"
    spec.write_text(f"base: {SMOKE}\n{overrides}task: {{name: classify, path: {data}}}\n{space}trials: {trials}\n"
                    f"budget: {{steps: 2}}\n{extra}")
    return spec


def test_pareto_front_by_hand():
    points = [(50.0, 100, "a"), (60.0, 1000, "b"), (55.0, 1000, "c"), (60.0, 5000, "d"), (40.0, 10, "e"),
              (50.0, 100, "f")]
    # c is beaten by b (same size, higher score), d by b (same score, smaller); a and f tie: both stay
    assert [p[2] for p in pareto_front(points)] == ["e", "a", "f", "b"]


def test_a_three_trial_search_finishes_and_resumes(tmp_path, capsys):
    import optuna

    spec = write_search(tmp_path)
    out = tmp_path / "out"
    assert main(["search", str(spec), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "pareto.json").read_text())
    assert summary["finished"] == 2 and len(summary["trials"]) == 2
    first = {t["number"]: t for t in summary["trials"]}
    # a trial left running by a killed search: its choices are tried again by the next trial
    study = optuna.load_study(study_name="peftlab-search", storage=f"sqlite:///{out / 'study.db'}")
    stopped = study.ask({"0.lora.use": optuna.distributions.CategoricalDistribution([False, True])})
    assert stopped.number == 2
    # resumed with a third trial wanted: the two finished ones are kept, never trained again
    before = {n: (out / t["run_dir"] / "metrics.json").read_bytes() for n, t in first.items() if t["run_dir"]}
    assert main(["search", str(spec), "--out", str(out), "--quiet", "trials=3"]) == 0
    summary = json.loads((out / "pareto.json").read_text())
    states = {t["number"]: t["state"] for t in summary["trials"]}
    assert summary["finished"] == 3 and states[2] == "fail" and states[3] in ("complete", "pruned")
    retried = optuna.load_study(study_name="peftlab-search", storage=f"sqlite:///{out / 'study.db'}").trials[3]
    assert retried.params["0.lora.use"] == stopped.params["0.lora.use"]
    for n, metrics in before.items():
        assert (out / first[n]["run_dir"] / "metrics.json").read_bytes() == metrics
    for t in summary["trials"]:
        if t["state"] == "complete" and t["run_dir"]:
            m = json.loads((out / t["run_dir"] / "metrics.json").read_text())
            assert m["test_split"] == "valid"  # a search scores on validation, never on test
            assert t["score"] == m["task_metrics"]["sentiment"]["accuracy"]
            assert t["trainable_params"] == m["trainable_params"] <= 5000
    front = summary["front"]
    assert front and all(f["state"] == "complete" for f in front)
    assert (out / "pareto.png").stat().st_size > 1000 and "| Trial |" in (out / "pareto.md").read_text()
    assert "stopped mid-run, retried" in (out / "trials.md").read_text()


def test_per_layer_sizes_become_method_configs(tmp_path):
    import optuna

    search = load_search(write_search(tmp_path))
    search.blocks = 2
    fixed = {"0.lora.use": False, "1.parallel.use": True, "1.parallel.bottleneck.layer0": 8,
             "1.parallel.bottleneck.layer1": 4}
    study = optuna.create_study()
    study.enqueue_trial(fixed)
    methods = sample(study.ask(), search)
    assert methods == [{"name": "parallel", "bottleneck": 4, "layers": [1]},
                       {"name": "parallel", "bottleneck": 8, "layers": [0]}]


def test_search_spec_errors_name_file_and_line(tmp_path):
    spec = write_search(tmp_path, space="space:\n  - {name: lora, choose: {rank: [2, 4]}}\n")
    with pytest.raises(ConfigError,
                       match=r"search.yaml:\d+: space.0.choose: lora has no field 'rank' \(did you mean 'r'\?\)"):
        load_search(spec)
    spec = write_search(tmp_path, space="space:\n  - {name: lora, choose: {r: [2, 4]}, per_layer: r}\n")
    with pytest.raises(ConfigError, match=r"search.yaml:\d+: space.0.per_layer: lora has no 'layers' field"):
        load_search(spec)
    spec = write_search(tmp_path, space="space:\n  - {name: lora, choose: {r: [2, -1]}}\n")
    with pytest.raises(ConfigError, match=r"search.yaml:\d+: space.0: .*r must be >= 1"):
        load_search(spec)
    spec = write_search(tmp_path, space="space:\n  - {name: loraa}\n")
    with pytest.raises(ConfigError, match=r"search.yaml:\d+: space.0.name: unknown method 'loraa'"):
        load_search(spec)
    assert main(["search", str(spec), "--out", str(tmp_path / "o")]) == 2


def test_methods_the_model_cannot_take_are_refused_before_any_trial(tmp_path):
    """Each value a trial can draw is applied on the meta device first: LLaMA-Adapter on a T5 base, or
    LoRA on a module T5 does not have, used to fail every trial that drew it (issue 35)."""
    from peftlab.lab.search.run import run_search

    space = ("space:\n  - {name: lora, choose: {r: [2], targets: [[q, v], [gate_proj]]}}\n"
             "  - {name: llama_adapter, choose: {length: [2]}}\n")
    spec, out = write_search(tmp_path, space=space), tmp_path / "o"
    with pytest.raises(ConfigError, match=r"(?s)checked before any run.*.lora with targets=\['gate_proj'\]. on "
                                          r".*'llama_adapter' on .*does not support the 't5' family"):
        run_search(spec, out, progress=False)
    assert not out.exists()
