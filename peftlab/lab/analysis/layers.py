"""Per-layer adapter importance: how much the score drops when one layer's adapters are taken out.

AdapterDrop (Rücklé et al., 2021, arXiv:2010.11918) observed that adapters in the lower layers
matter less, and dropped them for speed. ``layer_importance`` measures it on a trained run: it loads
the run's adapter onto a fresh base (as ``peftlab eval`` does), scores the test rows, then, one
block at a time, puts that block's adapter parameters back to what they were **before training**
and scores again; the drop of the task's primary metric is that layer's importance.

* ``mode="reset"`` (the default) restores the parameters the run started from (the same seed
  builds the same initialisation). For a method that is the identity at init — LoRA (B = 0),
  zero-initialised bottleneck adapters, IA3 (scales of 1), LLaMA-Adapter (gates of 0) — this is
  exactly removing the layer's adapters. For one that is not (prefix rows, Houlsby's near-identity
  init) it is "untrained", which is what training put there.
* ``mode="zero"`` sets them to 0 instead: removal for additive methods, not for multiplicative
  ones (an IA3 scale of 0 silences the layer).

A block is one of ``family.blocks(model)`` (each stack's own: T5's encoder and decoder blocks are
ablated separately); an adapter module belongs to the block it sits in. Parameters outside every
block (the alignment adapter on the encoder output, prompt embeddings, LLaMA-Adapter v2's LM head
scale) are listed, never ablated.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import torch

from peftlab.errors import ConfigError, ModelError


def block_adapter_params(model, family) -> list[tuple[str, int, dict[str, torch.nn.Parameter]]]:
    """``(stack, index, {parameter name: parameter})`` of the adapter parameters inside each block
    (those of the ``AdapterModule`` s the methods injected there), bottom to top per stack."""
    from peftlab.methods.base import AdapterModule

    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for stack, index, block in family.blocks(model):
        params = {}
        for m in block.modules():
            if isinstance(m, AdapterModule):
                params.update({names[id(p)]: p for p in m.adapter_parameters() if id(p) in names})
        out.append((stack, index, params))
    return out


def initial_parameters(cfg, manifest_configs) -> dict[str, torch.Tensor]:
    """The run's adapter parameters as they were at initialisation (a fresh build, same seed)."""
    from peftlab.methods import peft_state
    from peftlab.lab.run import build

    loaded, state = build(dataclasses.replace(cfg, methods=manifest_configs))
    params = dict(loaded.model.named_parameters())
    out = {n: params[n].detach().clone() for n in peft_state(loaded.model).trainable_names()}
    del loaded, state, params
    return out


def layer_importance(run_dir: Path, *, mode: Literal["reset", "zero"] = "reset", max_examples: Optional[int] = None,
                     split: Optional[str] = None) -> dict:
    """The score of ``run_dir`` with every block's adapters, and without each block's in turn."""
    from peftlab.config import from_dict
    from peftlab.methods import peft_state
    from peftlab.methods.base import MethodConfig
    from peftlab.methods.io import read_manifest
    from peftlab.lab.run import load_trained
    from peftlab.lab.rundata import load_examples
    from peftlab.lab import rundir

    if mode not in ("reset", "zero"):
        raise ConfigError(f"layer-importance --mode: 'reset' or 'zero', got {mode!r}")
    run_dir = Path(run_dir)
    cfg, loaded = load_trained(run_dir)
    model, family = loaded.model, loaded.family
    groups = [g for g in block_adapter_params(model, family) if g[2]]
    if not groups:
        raise ModelError(f"{run_dir}: no adapter module sits inside a block ({cfg.display_name()}); "
                         f"nothing to ablate layer by layer")
    inside = {n for _, _, params in groups for n in params}
    outside = [n for n in peft_state(model).trainable_names() if n not in inside]
    if mode == "reset":
        saved = [from_dict(MethodConfig, m) for m in read_manifest(run_dir / rundir.ADAPTER)["methods"]]
        start = initial_parameters(cfg, saved)
    cfg = _scoring_config(cfg, rundir.read_metrics(run_dir) if (run_dir / rundir.METRICS).is_file() else {})
    causal = family.kind == "causal"
    rows = load_examples(cfg.data, split or cfg.data.test_split, max_examples or cfg.eval.max_examples, causal,
                         loaded.tokenizer)
    score = _scorer(model, loaded.tokenizer, cfg, rows)
    baseline = score()
    layers = []
    for stack, index, params in groups:
        kept = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(start[n] if mode == "reset" else torch.zeros_like(p))
        scores = score()
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(kept[n])
        layers.append({"stack": stack, "layer": index, "params": sum(p.numel() for p in params.values()),
                       "scores": scores, "drop": {t: baseline[t] - s for t, s in scores.items()}})
    return {"run": str(run_dir), "method": cfg.display_name(), "mode": mode, "split": split or cfg.data.test_split,
            "examples": len(rows), "metric": {t.describe(): t.primary_metric for t in cfg.data.tasks},
            "baseline": baseline, "layers": layers, "not_ablated": outside}


def _scoring_config(cfg, metrics: dict):
    """Score as the run did: its chosen decoding (``eval.select``) fixed, no selection again."""
    ev = dataclasses.replace(cfg.eval, select={}, floors=False)
    chosen = (metrics.get("task_metrics") or {}).get(cfg.data.tasks[0].describe(), {}).get("decoding")
    if chosen and len(cfg.data.tasks) == 1:
        ev = dataclasses.replace(ev, **chosen)
    return dataclasses.replace(cfg, eval=ev)


def _scorer(model, tokenizer, cfg, rows):
    from peftlab.lab.scoring import score

    def run() -> dict[str, float]:
        scores, _ = score(model, tokenizer, cfg, rows)
        return {t.describe(): float(scores["task_metrics"][t.describe()][t.primary_metric]) for t in cfg.data.tasks
                if t.describe() in scores["task_metrics"]}

    return run


def write_layer_importance(result: dict, out: Path) -> dict[str, Path]:
    """``layer_importance.json``, ``.md`` (a table) and ``.png`` (the drop per layer) into ``out``."""
    from peftlab.lab import rundir

    rundir.make_dir(Path(out), "--out")
    out = Path(out)
    rundir.write_json(out / "layer_importance.json", result)
    tasks = list(result["baseline"])
    head = " | ".join(f"{t} {result['metric'][t]} | drop" for t in tasks)
    lines = [f"# Layer importance: `{result['run']}` ({result['method']})", "",
             f"Each block's adapter parameters "
             f"{'reset to their initial values' if result['mode'] == 'reset' else 'zeroed'} "
             f"in turn; scored on {result['examples']} {result['split']} rows. Baseline (all adapters): "
             + ", ".join(f"{t} {result['metric'][t]} {v:.2f}" for t, v in result["baseline"].items()) + ".", "",
             f"| Stack | Layer | Params | {head} |", "|---|---:|---:|" + "---:|---:|" * len(tasks)]
    for r in result["layers"]:
        cells = " | ".join(f"{r['scores'][t]:.2f} | {r['drop'][t]:+.2f}" for t in tasks)
        lines.append(f"| {r['stack']} | {r['layer']} | {r['params']:,} | {cells} |")
    if result["not_ablated"]:
        lines += ["", f"Not ablated (outside every block): {', '.join(result['not_ablated'][:8])}"
                  + (" ..." if len(result["not_ablated"]) > 8 else "")]
    rundir.write_text(out / "layer_importance.md", "\n".join(lines) + "\n")
    plot_drops(result, out / "layer_importance.png")
    return {"json": out / "layer_importance.json", "md": out / "layer_importance.md",
            "png": out / "layer_importance.png"}


def plot_drops(result: dict, path: Path) -> Path:
    """Bars: the primary metric's drop per layer, one panel per task, a colour per stack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result["baseline"])
    stacks = list(dict.fromkeys(r["stack"] for r in result["layers"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.6), squeeze=False)
    width = 0.8 / len(stacks)
    for ax, task in zip(axes[0], tasks):
        for k, stack in enumerate(stacks):
            rows = [r for r in result["layers"] if r["stack"] == stack]
            ax.bar([r["layer"] + (k - (len(stacks) - 1) / 2) * width for r in rows], [r["drop"][task] for r in rows],
                   width, label=stack)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("layer (block index, bottom = 0)")
        ax.set_ylabel(f"drop in {result['metric'][task]}")
        ax.set_title(f"{task}: baseline {result['baseline'][task]:.2f}")
        if len(stacks) > 1:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{result['method']}: each layer's adapters {result['mode']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
