"""A bench report shows outputs beside the scores: for each generation task its first test rows
side by side (input, reference, each method's output), kept through publication."""

from __future__ import annotations

import json

from bench_helpers import write_spec
from peftlab.lab.bench.run import run_bench


def test_the_report_shows_the_first_test_rows_of_each_generation_task_and_publication_keeps_them(tmp_path):
    from peftlab.lab.cli import main

    spec = write_spec(tmp_path, seeds="[0]", extra="isolate: false\n")
    spec.write_text(spec.read_text().replace("  - {task: {name: classify", "  # - {task: {name: classify"))
    out = tmp_path / "out"
    run_bench(spec, out, progress=False)
    report = (out / "report.md").read_text()
    examples = report.split("## Examples")[1].split("\n## ")[0]
    assert "### code2doc" in examples and "| Function | Reference | LoRA | IA3 |" in examples
    table = [ln for ln in examples.splitlines() if ln.startswith("| `def ")]
    assert len(table) == 3  # the first three test rows
    first = json.loads((out / "code2doc" / "lora" / "seed0" / "predictions.jsonl").read_text().splitlines()[0])
    assert " ".join(first["prediction"].split()).replace("|", "\\|") in table[0] or first["prediction"].strip() == ""
    published = tmp_path / "pub"
    assert main(["report", str(out), "--publish", str(published)]) == 0
    head = (published / "code2doc" / "lora" / "seed0" / "predictions.head.jsonl").read_text().splitlines()
    assert len(head) == 3 and not (published / "code2doc" / "lora" / "seed0" / "predictions.jsonl").exists()
    again = (published / "report.md").read_text().split("## Examples")[1].split("\n## ")[0]
    assert [ln for ln in again.splitlines() if ln.startswith("| `def ")] == table
    assert "<h2>Examples</h2>" in (published / "report.html").read_text()
