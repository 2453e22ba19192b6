"""A bench of many runs in one process keeps its memory flat: no
model, optimizer or dataset outlives its run, and each run reports its own peak, not the
process's highest so far."""

import gc
from pathlib import Path

import torch

from tiny_runs import SMOKE, make_data, tiny_args

RUNS = 12
WARM = 3  # the first runs import modules, fill caches and grow the allocator's pools


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _live(kind) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


def test_many_runs_in_one_process_keep_memory_flat(tmp_path, monkeypatch):
    """12 full fine-tuning runs of a 1.8M-parameter model through ``compare``.

    Exact check: after each run (and a collection) no ``nn.Module``, optimizer or parameter-sized
    tensor more is alive than after the first run. Bound on RSS: a run keeps ~7 MB alive when it
    leaks its model (1.8M fp32 weights), ~22 MB with its AdamW moments, more with its dataset; the
    RSS of the last runs may exceed the warm-up's highest by 40 MB (allocator noise measured here:
    +-10 MB), so a leak of a model per run shows by the 5th run, of everything at once by the 2nd.
    Each run's reported peak must stay within the same 40 MB of the warm-up runs' peaks, which an
    earlier large allocation (256 MB, freed) must not raise.
    """
    import peftlab.lab.run
    from peftlab.lab.compare import compare

    data = make_data(tmp_path / "data")
    cfgs = tmp_path / "cfgs"
    cfgs.mkdir()
    for i in range(RUNS):
        (cfgs / f"run{i:02d}.yaml").write_text(Path(SMOKE).read_text())
    overrides = tiny_args(data, "methods=[{name: full}]", "model.config={d_model: 128, d_kv: 32, d_ff: 256, "
                          "num_layers: 2, num_decoder_layers: 2, num_heads: 4}", "train.max_steps=2",
                          "eval.max_examples=1", "eval.max_new_tokens=1")

    seen = []
    real_train_run = peftlab.lab.run.train_run

    def measured(cfg, run_dir, **kw):
        if len(seen) == WARM:  # a big transient allocation between runs: later peaks must not show it
            big = torch.ones(256 * 2**20 // 4 * 4, dtype=torch.uint8)
            del big
        metrics = real_train_run(cfg, run_dir, **kw)
        gc.collect()
        seen.append({"rss": _rss_mb(), "peak": metrics["peak_memory_bytes"] / 2**20,
                     "modules": _live(torch.nn.Module), "optimizers": _live(torch.optim.Optimizer),
                     "big_tensors": sum(1 for o in gc.get_objects() if torch.is_tensor(o) and o.numel() > 100_000)})
        return metrics

    monkeypatch.setattr(peftlab.lab.run, "train_run", measured)
    rows = compare([cfgs], tmp_path / "out", overrides=overrides, progress=False, isolate=False)
    assert len(rows) == RUNS and len(seen) == RUNS
    first = seen[0]
    for i, s in enumerate(seen):
        assert (s["modules"], s["optimizers"], s["big_tensors"]) == (first["modules"], 0, first["big_tensors"]), (i, s)
    warm_rss = max(s["rss"] for s in seen[:WARM])
    assert max(s["rss"] for s in seen[WARM:]) < warm_rss + 40, [round(s["rss"]) for s in seen]
    warm_peak = max(s["peak"] for s in seen[:WARM])
    assert max(s["peak"] for s in seen[WARM:]) < warm_peak + 40, [round(s["peak"]) for s in seen]
