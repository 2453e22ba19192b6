"""A finished run decodes as it chose on validation: the quickstart chooses like the bench's code2doc
task, and `peftlab generate` / `peftlab eval` use the run's recorded choice by default, with
--num-beams / --no-repeat-ngram-size / --max-new-tokens over it, on an encoder-decoder and a decoder."""

import json
from pathlib import Path

import pytest

from peftlab.lab.cli import main
from tiny_runs import make_data

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "smoke.yaml": "model.config={d_model: 16, d_kv: 4, d_ff: 32, num_layers: 1, num_decoder_layers: 1, num_heads: 2}",
    "smoke-llama.yaml": "model.config={hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1, "
                        "num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8}",
}
# one setting to choose from, never greedy: what the run must then decode with
CHOSEN = {"num_beams": 3, "no_repeat_ngram_size": 2}
CODE = ("def moving_average(xs, n):\n    out = []\n    for i in range(len(xs) - n + 1):\n"
        "        out.append(sum(xs[i:i + n]) / n)\n    return out\n\n\n"
        "def read_config(path):\n    with open(path) as f:\n        return f.read()\n")


def test_the_quickstart_chooses_its_decoding_on_validation_like_the_code2doc_task():
    from peftlab.config import load_config
    from peftlab.schema import RunConfig

    task = load_config(RunConfig, ROOT / "configs" / "tasks" / "code2doc.yaml", []).eval.select
    configs = sorted((ROOT / "configs" / "quickstart").glob("*.yaml"))
    assert len(configs) == 2
    for path in configs:  # every config of the comparison: the zero-shot baseline chooses too
        select = load_config(RunConfig, path, []).eval.select
        assert select == task, path.name
        assert max(select["num_beams"]) > 1 and max(select["no_repeat_ngram_size"]) > 0


@pytest.fixture(scope="module", params=sorted(TINY))
def chosen_run(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decoding")
    data = make_data(tmp / "data")
    run = tmp / "run"
    assert main(["train", str(ROOT / "configs" / request.param), "--out", str(run), "--quiet", TINY[request.param],
                 "train.max_steps=1", "train.warmup_steps=0", "data.max_source_length=64",
                 "data.max_target_length=16", "data.max_eval_examples=3", "eval.max_examples=3",
                 "eval.max_new_tokens=8", f"data.task.path={data}",
                 "eval.select={num_beams: [3], no_repeat_ngram_size: [2]}"]) == 0
    (tmp / "f.py").write_text(CODE)
    return run, tmp / "f.py"


def _generate(run: Path, code: Path, capsys, *flags: str) -> str:
    assert main(["generate", str(run), "--code", str(code), *flags]) == 0
    return capsys.readouterr().out


def test_generate_decodes_as_the_run_chose_by_default(chosen_run, capsys):
    run, code = chosen_run
    assert json.loads((run / "metrics.json").read_text())["decoding"] == CHOSEN
    default = _generate(run, code, capsys)
    assert default == _generate(run, code, capsys, "--num-beams", "3", "--no-repeat-ngram-size", "2")
    greedy = _generate(run, code, capsys, "--num-beams", "1", "--no-repeat-ngram-size", "0")
    assert greedy != default  # the model is one where the choice matters
    short = _generate(run, code, capsys, "--max-new-tokens", "2")
    assert len(short) < len(default)


def test_eval_decodes_as_the_run_chose_without_choosing_again(chosen_run, capsys):
    run, _ = chosen_run
    assert main(["eval", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decoding"] == CHOSEN and "decoding_selection" not in out
    mine = [json.loads(x)["prediction"] for x in (run / "predictions.test.eval.jsonl").read_text().splitlines()]
    theirs = [json.loads(x)["prediction"] for x in (run / "predictions.jsonl").read_text().splitlines()]
    assert mine == theirs
    assert main(["eval", str(run), "--num-beams", "1", "--no-repeat-ngram-size", "0", "--max-new-tokens", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["decoding"] == {"num_beams": 1, "no_repeat_ngram_size": 0,
                                                               "max_new_tokens": 4}


def test_decoding_flags_are_checked(chosen_run, capsys):
    run, code = chosen_run
    assert main(["eval", str(run), "--num-beams", "0"]) == 2
    assert "eval --num-beams: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["generate", str(run), "--code", str(code), "--no-repeat-ngram-size", "-1"]) == 2
    assert "generate --no-repeat-ngram-size: must be >= 0, got -1" in capsys.readouterr().err
    assert main(["eval", str(run), "--perplexity", "stdlib", "--num-beams", "2"]) == 2
    assert "perplexity decodes nothing" in capsys.readouterr().err


def test_a_named_evaluation_takes_the_decoding_flags_too(chosen_run, capsys):
    run, _ = chosen_run
    assert main(["eval", str(run), "--name", "greedy", "--set", "data.test_split=valid", "--num-beams", "1"]) == 0
    record = json.loads((run / "evals" / "greedy.json").read_text())
    assert record["task_metrics"]["code2doc"]["decoding"] == dict(CHOSEN, num_beams=1)
