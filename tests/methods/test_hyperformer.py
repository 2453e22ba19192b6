"""HyperFormer++: the paper's equations checked by hand on small tensors (no library implements it
in transformers 5), its parameter count, per-row tasks, task ids through training, generation and
label ranking, adding a task, and a multi-task run end to end."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from peftlab.errors import ModelError
from peftlab.methods import apply_methods, peft_state
from peftlab.methods.houlsby import HoulsbyConfig
from peftlab.methods.hyperformer import ATTR, HyperAdapter, HyperFormerConfig, add_task, hypernetwork
from peftlab.methods.io import MANIFEST, load_adapter, save_adapter

from conftest import VOCAB, build_llama, build_t5, logits

SMALL = dict(task_dim=8, hidden=16, projected=8)  # t, h, p_dim
BUILD = {"t5": build_t5, "llama": build_llama}


def randomize(model, seed=0):
    """Every HyperFormer parameter random (init zero makes the adapters vanish)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hypernetwork(model).parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 1.0))
    return model


def batch_of(family, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, 6), generator=g)
    return {"input_ids": ids, "labels": ids}


# ------------------------------------------------------------------------------------------------
# The equations, by hand
# ------------------------------------------------------------------------------------------------
def by_hand(net, site, task: int) -> dict[str, torch.Tensor]:
    """D, b_D, U, b_U, (γ, β) before/after, from the paper's equations with the module's weights."""
    gen = net.nets[site.net]  # the site's stack's hypernetwork
    x = torch.cat([net.task_embeddings[task], gen.layer_embeddings.weight[site.layer],
                   gen.position_embeddings.weight[site.position]])
    w1, w2 = gen.projector[0], gen.projector[2]
    hidden = torch.relu(w1.weight @ x + w1.bias)
    proj = w2.weight @ hidden + w2.bias
    mu, var = proj.mean(), proj.var(unbiased=False)
    i_tau = (proj - mu) / torch.sqrt(var + gen.norm.eps) * gen.norm.weight + gen.norm.bias  # I_τ
    g = gen.generator.weight @ i_tau + gen.generator.bias
    d, m = net.d, net.m
    out, k = {}, 0
    for name, n in [("D", m * d), ("b_D", m), ("U", d * m), ("b_U", d)] + [
            (f"{w}_{where}", d) for where, on in (("before", net.ln_before), ("after", net.ln_after)) if on
            for w in ("gamma", "beta")]:
        out[name], k = g[k:k + n], k + n
    out["D"], out["U"] = out["D"].reshape(m, d), out["U"].reshape(d, m)
    return out


@pytest.mark.parametrize("family", ["t5", "llama"])
@pytest.mark.parametrize("ln_before", [False, True])
def test_equations_by_hand_through_houlsby_adapters(family, ln_before):
    """For each task, copying the hand-computed D, U, γ, β of every site into Houlsby adapters (same
    places, ``ln_before``/``ln_after``, gelu_new) gives the HyperFormer model's logits: the paper's
    equations, and HyperFormer sitting exactly where Houlsby adapters sit."""
    build, batch = BUILD[family], batch_of(family)
    cfg = HyperFormerConfig(tasks=3, **SMALL, reduction_factor=8, ln_before=ln_before, init="normal")
    hyper = build()
    apply_methods(hyper, [cfg])
    randomize(hyper)
    net = hypernetwork(hyper)
    for task in range(3):
        houlsby = build()
        apply_methods(houlsby, [HoulsbyConfig(bottleneck=net.m, nonlinearity="gelu_new", ln_before=ln_before,
                                              ln_after=True)])
        mods = dict(houlsby.named_modules())
        sites = [(n, m) for n, m in hyper.named_modules() if isinstance(m, HyperAdapter)]
        assert len(sites) == len([m for m in mods if m.rsplit(".", 1)[-1].startswith("houlsby_")])
        with torch.no_grad():
            for name, site in sites:
                w = by_hand(net, site, task)
                target = mods[name.replace(".hyperformer_", ".houlsby_")]
                target.down.weight.copy_(w["D"]), target.down.bias.copy_(w["b_D"])
                target.up.weight.copy_(w["U"]), target.up.bias.copy_(w["b_U"])
                target.ln_after.weight.copy_(w["gamma_after"]), target.ln_after.bias.copy_(w["beta_after"])
                if ln_before:
                    target.ln_before.weight.copy_(w["gamma_before"]), target.ln_before.bias.copy_(w["beta_before"])
        ids = torch.full((3,), task)
        expected = logits(houlsby, batch)
        assert (expected - logits(build(), batch)).abs().max() > 1e-2  # the adapters do something
        torch.testing.assert_close(logits(hyper, {**batch, "task_ids": ids}), expected, atol=2e-5, rtol=0)


def hyperformer_count(c, tasks, t, h, p, rf, kinds=("self", "ffn"), ln_before=False, ln_after=True, norms=True,
                      layers=None, nets=None):
    """The parameter count of the module docstring, from the config and the model shape alone:
    ``layers`` adapted blocks in each of ``nets`` hypernetworks (default: every block, one per stack)."""
    d = c.d_model if c.model_type == "t5" else c.hidden_size
    m = int(d // rf)
    big_g = 2 * d * m + m + d + 2 * d * (ln_before + ln_after)
    if nets is None:
        nets = [c.num_layers, c.num_decoder_layers] if c.model_type == "t5" else [c.num_hidden_layers]
    shared = sum((n + len(kinds)) * t + (3 * t * h + h) + (h * p + p) + 2 * p + (p + 1) * big_g for n in nets)
    if norms:  # every base norm: T5 2 per encoder block, 3 per decoder block, 2 final; LLaMA 2 per block + 1
        n_norms = (2 * c.num_layers + 3 * c.num_decoder_layers + 2 if c.model_type == "t5"
                   else 2 * c.num_hidden_layers + 1)
        shared += n_norms * d
    return shared, [t] * tasks


@pytest.mark.parametrize("family, kw, nets", [
    ("t5", dict(tasks=2), None),
    ("t5", dict(tasks=5, sublayers=("self", "cross", "ffn"), ln_before=True, train_norms=False), None),
    ("t5", dict(tasks=1, ln_after=False, reduction_factor=4, drop_lowest=1), [1, 1]),  # AdapterDrop
    ("t5", dict(tasks=2, hypernetworks="model"), [4]),  # one hypernetwork over both stacks
    ("t5", dict(tasks=2, stacks=("encoder",)), [2]),
    ("llama", dict(tasks=3), None),
    ("llama", dict(tasks=2, layers=(1,), reduction_factor=2), [1]),
])
def test_parameter_count_formula(family, kw, nets):
    model = BUILD[family]()
    cfg = HyperFormerConfig(**SMALL, **kw)
    state = apply_methods(model, [cfg])
    shared, by_task = hyperformer_count(
        model.config, cfg.tasks, 8, 16, 8, cfg.reduction_factor, cfg.sublayers, cfg.ln_before, cfg.ln_after,
        cfg.train_norms, nets=nets)
    assert state.counts(model) == {"hyperformer": shared + sum(by_task)}
    assert state.per_task(model) == {"shared": shared, "by_task": by_task}


def test_the_papers_figure_on_t5_base():
    """The paper: HyperFormer++ on T5-base trained on the 8 GLUE tasks adds 0.29% parameters per
    task (its settings: hyperformer++.json of the reference code; meta device, no weights)."""
    from transformers import T5Config, T5ForConditionalGeneration

    t5_base = dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12,
                   vocab_size=32128, feed_forward_proj="relu", tie_word_embeddings=True)
    with torch.device("meta"):
        model = T5ForConditionalGeneration(T5Config(**t5_base))
    base = sum(p.numel() for p in model.parameters())
    cfg = HyperFormerConfig(tasks=8, task_dim=64, hidden=128, projected=64, reduction_factor=32, nonlinearity="gelu_new")
    state = apply_methods(model, [cfg])
    n = state.trainable_params(model)
    shared, by_task = hyperformer_count(model.config, 8, 64, 128, 64, 32)
    assert n == shared + sum(by_task) == 5_211_056
    assert round(100 * n / 8 / base, 2) == 0.29


def test_more_tasks_cost_only_their_embeddings():
    counts = []
    for tasks in (1, 2, 7):
        model = build_t5()
        counts.append(apply_methods(model, [HyperFormerConfig(tasks=tasks, **SMALL)]).trainable_params(model))
    assert counts[1] - counts[0] == 8 and counts[2] - counts[0] == 6 * 8


# ------------------------------------------------------------------------------------------------
# Task ids
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["t5", "llama"])
def test_each_row_uses_its_own_task(family):
    model = randomize(_applied(family, tasks=3))
    batch = batch_of(family, n=4)
    mixed = logits(model, {**batch, "task_ids": torch.tensor([2, 0, 1, 2])})
    for row, task in enumerate([2, 0, 1, 2]):
        alone = logits(model, {k: v[row:row + 1] for k, v in batch.items()} | {"task_ids": torch.tensor([task])})
        torch.testing.assert_close(mixed[row:row + 1], alone, atol=2e-5, rtol=0)
    assert (logits(model, {**batch, "task_ids": torch.zeros(4, dtype=torch.long)})
            - logits(model, {**batch, "task_ids": torch.ones(4, dtype=torch.long)})).abs().max() > 1e-3


def _applied(family, **kw):
    model = BUILD[family]()
    apply_methods(model, [HyperFormerConfig(**{**SMALL, "init": "normal", **kw})])
    return model


def test_without_ids_the_set_task_is_used(tiny_t5):
    model = randomize(_applied("t5", tasks=2))
    batch = batch_of("t5")
    hypernetwork(model).set_task(1)
    torch.testing.assert_close(logits(model, batch), logits(model, {**batch, "task_ids": torch.ones(3, dtype=torch.long)}),
                               atol=2e-5, rtol=0)
    with pytest.raises(ModelError, match="task 2 does not exist"):
        hypernetwork(model).set_task(2)


def test_bad_task_ids_are_named():
    model = _applied("t5", tasks=2)
    batch = batch_of("t5")
    with pytest.raises(ModelError, match=r"task_ids \[0, 5\] out of range: this model has 2 tasks"):
        model(**batch, task_ids=torch.tensor([0, 5, 0]))
    with pytest.raises(ModelError, match="task_ids has 2 rows, the batch 3"):
        model(**batch, task_ids=torch.tensor([0, 1]))


def test_generation_per_task_and_t5_encoder_alone():
    """T5's generate runs its encoder alone and its decoder steps without ids: both use the set task,
    never the ids of an earlier call (here of another batch size)."""
    model = randomize(_applied("t5", tasks=2))
    batch = batch_of("t5", n=2)
    enc = {"input_ids": batch["input_ids"]}
    model(**batch_of("t5", n=3), task_ids=torch.tensor([1, 1, 0]))  # leaves ids of 3 rows behind
    scores = []
    for task in (0, 1):
        hypernetwork(model).set_task(task)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True)
        start = torch.zeros(2, 1, dtype=torch.long)
        first = logits(model, {**enc, "decoder_input_ids": start, "task_ids": torch.full((2,), task)})[:, 0]
        torch.testing.assert_close(out.scores[0], first, atol=2e-5, rtol=0)
        scores.append(out.scores[0])
    assert (scores[0] - scores[1]).abs().max() > 1e-3


def test_llama_cached_generation_matches_the_full_forward():
    model = randomize(_applied("llama", tasks=2))
    hypernetwork(model).set_task(1)
    ids = batch_of("llama", n=2)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
    full = logits(model, {"input_ids": out.sequences, "task_ids": torch.ones(2, dtype=torch.long)})
    for step, s in enumerate(out.scores):
        torch.testing.assert_close(s, full[:, ids.shape[1] - 1 + step], atol=2e-5, rtol=0)


def test_gradient_checkpointing_keeps_each_rows_task():
    batch = {**batch_of("t5", n=3), "task_ids": torch.tensor([1, 0, 1])}
    grads = []
    for checkpointing in (False, True):
        model = randomize(_applied("t5", tasks=2))
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, atol=1e-5, rtol=1e-4, msg=n)


def test_deep_copy_runs_its_own_hypernetwork():
    model = randomize(_applied("t5", tasks=2))
    twin = copy.deepcopy(model)
    batch = {**batch_of("t5"), "task_ids": torch.tensor([0, 1, 0])}
    with torch.no_grad():
        hypernetwork(twin).nets['encoder'].generator.weight.mul_(3)
    assert (logits(twin, batch) - logits(model, batch)).abs().max() > 1e-3
    assert hypernetwork(twin)._groups is not None and hypernetwork(model)._groups is not None


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_bf16_autocast_and_bf16_base(family):
    batch = {**batch_of(family), "task_ids": torch.tensor([0, 1, 1])}
    model = randomize(_applied(family, tasks=2))
    full = logits(model, batch)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    out.loss.backward()
    assert all(n.generator.weight.grad is not None for n in hypernetwork(model).nets.values())
    torch.testing.assert_close(out.logits.float(), full, atol=0.1, rtol=0)  # bf16: ~3 significant digits
    half = BUILD[family]().to(torch.bfloat16)
    apply_methods(half, [HyperFormerConfig(tasks=2, **SMALL)])
    assert half(**batch).logits.dtype == torch.bfloat16


def test_evaluation_cache_follows_the_weights():
    model = randomize(_applied("t5", tasks=2))
    batch = batch_of("t5")
    before = logits(model, batch)
    with torch.no_grad():
        hypernetwork(model).task_embeddings[0].mul_(-1)  # an in-place change, as an optimizer step makes
    assert (logits(model, batch) - before).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------
# Adding a task; saving and loading
# ------------------------------------------------------------------------------------------------
def _train(model, batch, steps=3, lr=1e-2):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()


def test_a_trained_model_learns_a_new_task_by_its_embedding_alone(tmp_path):
    base_rec = {"name": "tiny", "init": "random", "config": {}}
    model = _applied("t5", tasks=2, init="zero")
    batch = batch_of("t5", n=4)
    _train(model, {**batch, "task_ids": torch.tensor([0, 1, 0, 1])})
    old = {t: logits(model, {**batch, "task_ids": torch.full((4,), t)}) for t in (0, 1)}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}

    assert add_task(model) == 2
    net, state = hypernetwork(model), peft_state(model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [f"{ATTR}.task_embeddings.2"]
    assert state.configs[0].tasks == 3 and state.per_task(model)["by_task"] == [8, 8, 8]
    new_ids = torch.full((4,), 2)
    loss0 = model(**batch, task_ids=new_ids).loss.item()
    _train(model, {**batch, "task_ids": new_ids}, steps=5)
    assert model(**batch, task_ids=new_ids).loss.item() < loss0
    for n, p in model.named_parameters():
        if n != f"{ATTR}.task_embeddings.2":
            assert torch.equal(p, frozen[n]), f"{n} changed while only the new task trained"
    for t in (0, 1):  # the tasks trained before are exactly as they were
        torch.testing.assert_close(logits(model, {**batch, "task_ids": torch.full((4,), t)}), old[t], atol=0, rtol=0)

    save_adapter(model, tmp_path, base_model=base_rec)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["methods"][0]["tasks"] == 3
    assert manifest["trainable_params_per_task"]["by_task"] == [8, 8, 8]
    fresh = build_t5()
    load_adapter(fresh, tmp_path, base_model=base_rec)
    for t in range(3):
        ids = torch.full((4,), t)
        torch.testing.assert_close(logits(fresh, {**batch, "task_ids": ids}), logits(model, {**batch, "task_ids": ids}),
                                   atol=0, rtol=0)


def test_conflicts_and_config_errors():
    with pytest.raises(ModelError, match="'houlsby' and 'hyperformer' both claim one parameter"):
        apply_methods(build_t5(), [HoulsbyConfig(train_norms=True), HyperFormerConfig(tasks=2)])
    with pytest.raises(ModelError, match="tasks is null"):
        apply_methods(build_t5(), [HyperFormerConfig()])
    with pytest.raises(ModelError, match="sublayers .'cross'. do not exist in llama"):
        apply_methods(build_llama(), [HyperFormerConfig(tasks=1, sublayers=("self", "cross"))])
    for kw, field in [(dict(tasks=0), "tasks"), (dict(task_dim=0), "task_dim"), (dict(init="bert"), "init"),
                      (dict(sublayers=("ffn", "ffn")), "sublayers"), (dict(sublayers="ffn"), "sublayers"),
                      (dict(nonlinearity="sigmoidd"), "nonlinearity"), (dict(reduction_factor=0), "reduction_factor")]:
        with pytest.raises(ValueError, match=field):
            HyperFormerConfig(**kw)
    with pytest.raises(ValueError, match="tasks is 1 but the run trains 2 tasks"):
        HyperFormerConfig(tasks=1).sized_for(2)
    assert HyperFormerConfig().sized_for(3).tasks == 3


# ------------------------------------------------------------------------------------------------
# A multi-task run
# ------------------------------------------------------------------------------------------------
def _classify_data(root, name, rule):
    d = root / name
    d.mkdir()
    for split in ("train", "valid", "test"):
        rows = [{"text": f"item {i} {'x' * (i % 3)}", "label": rule(i)} for i in range(8)]
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_multi_task_run_trains_scores_and_reloads(tmp_path):
    """Two classify tasks written here, one ranked by label likelihood (task_ids in the batch) and one
    decoded (set_task before generate); per-task parameters in the metrics and the manifest."""
    from peftlab.config import load_config
    from peftlab.lab.run import train_run
    from peftlab.lab.finished import evaluate_run
    from peftlab.schema import RunConfig
    from tiny_runs import SMOKE, TINY_MODEL

    a = _classify_data(tmp_path, "evenodd", lambda i: ["even", "odd"][i % 2])
    b = _classify_data(tmp_path, "small", lambda i: ["yes", "no"][i > 3])
    cfg = load_config(RunConfig, SMOKE, [
        TINY_MODEL, "train.max_steps=3", "train.log_every=1", "train.warmup_steps=0", "eval.max_new_tokens=3",
        "methods=[{name: hyperformer, task_dim: 8, hidden: 16, projected: 8}]",
        f"data.task=[{{name: classify, path: {a}}}, {{name: classify, path: {b}, eval: generate}}]"])
    m = train_run(cfg, tmp_path / "run", progress=False)
    assert set(m["task_metrics"]) == {"evenodd", "small"} and all("accuracy" in v for v in m["task_metrics"].values())
    per_task = m["trainable_params_per_task"]
    assert per_task["by_task"] == {"evenodd": 8, "small": 8}
    assert per_task["shared"] + 16 == m["trainable_params"] == m["trainable_params_by_method"]["hyperformer"]
    manifest = json.loads((tmp_path / "run" / "adapter" / MANIFEST).read_text())
    assert manifest["methods"][0]["tasks"] == 2  # sized from data.task
    assert manifest["trainable_params_per_task"] == {"shared": per_task["shared"], "by_task": [8, 8]}
    again = evaluate_run(tmp_path / "run")
    for task, scores in m["task_metrics"].items():
        assert again["task_metrics"][task]["accuracy"] == scores["accuracy"]


def test_shipped_config_applies_to_mini_t5():
    """configs/mini-t5/multitask/hyperformer.yaml on the shipped mini-t5: one embedding per task of data.task."""
    from peftlab.config import load_config
    from peftlab.lab.run import build
    from peftlab.schema import RunConfig
    from tiny_runs import ROOT

    cfg = load_config(RunConfig, ROOT / "configs" / "mini-t5" / "multitask" / "hyperformer.yaml")
    loaded, state = build(cfg)
    c = loaded.model.config
    assert state.configs[0].tasks == len(cfg.data.tasks) == 2
    shared, by_task = hyperformer_count(c, 2, 64, 128, 64, 32)
    assert state.per_task(loaded.model) == {"shared": shared, "by_task": by_task}
