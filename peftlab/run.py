"""One run end to end: config -> model + methods -> data -> train -> generate -> metrics, on disk.

``train_run`` writes a run directory (see ``peftlab.rundir``); ``evaluate_run`` rebuilds the base
model, loads the saved adapter and re-scores a split; ``generate_one`` documents one function.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Optional

from peftlab import fingerprint, rundir
from peftlab.config import from_dict, read_yaml, to_dict
from peftlab.env import device_name, versions
from peftlab.errors import DataError
from peftlab.schema import DataSpec, RunConfig

log = logging.getLogger(__name__)


def base_model_record(cfg: RunConfig) -> dict:
    """What identifies the base model an adapter belongs to (seed matters for random init)."""
    rec = {"name": cfg.model.name, "init": cfg.model.init, "config": dict(cfg.model.config)}
    if cfg.model.init == "random":
        rec["seed"] = cfg.train.seed
    return rec


def load_examples(data: DataSpec, split: str, max_examples: Optional[int]):
    """Examples of a split; a fixed-seed sample when capped, so every method sees the same rows."""
    from peftlab.data.code2doc import default_code2doc_dir, load_code2doc_split

    path = default_code2doc_dir() if data.path == "stdlib" else Path(data.path)
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist")
    examples = load_code2doc_split(path, split, target_field=data.target_field)
    if not examples:
        raise DataError(f"{path}: split {split!r} is empty")
    if max_examples is not None and len(examples) > max_examples:
        examples = random.Random(0).sample(examples, max_examples)
    return examples


def prompts(data: DataSpec, examples) -> tuple[list[str], list[str]]:
    from peftlab.data.prompts import render_prompt

    return [render_prompt(data.template, e) for e in examples], [e.target for e in examples]


def build(cfg: RunConfig):
    """The base model with the config's methods applied: ``(LoadedModel, PeftState)``."""
    from peftlab.methods import apply_methods
    from peftlab.models.loading import load_model

    import torch

    loaded = load_model(cfg.model, seed=cfg.train.seed)
    if loaded.family.kind != "seq2seq":
        from peftlab.errors import ModelError

        raise ModelError(f"model.name: {cfg.model.name!r} is a {loaded.family.name} decoder; the code2doc task "
                         f"runs on encoder-decoder models for now (decoder fine-tuning comes with the LLaMA work)")
    with torch.random.fork_rng(devices=[]):  # method init (LoRA's A, ...) is a function of the seed alone
        torch.manual_seed(cfg.train.seed + 1)
        state = apply_methods(loaded.model, cfg.methods, loaded.family)
    return loaded, state


def score(model, tokenizer, cfg: RunConfig, examples) -> tuple[dict, list[dict]]:
    """Generate for ``examples`` and compute BLEU / CodeXGLUE BLEU / ROUGE-L."""
    from peftlab.evaluate.generate import generate_texts
    from peftlab.evaluate.metrics import text_metrics

    sources, targets = prompts(cfg.data, examples)
    t0 = time.perf_counter()
    preds = generate_texts(
        model, tokenizer, sources, max_source_length=cfg.data.max_source_length,
        max_new_tokens=cfg.eval.max_new_tokens, num_beams=cfg.eval.num_beams,
        batch_size=cfg.eval.batch_size, mixed_precision=cfg.train.mixed_precision,
        no_repeat_ngram_size=cfg.eval.no_repeat_ngram_size, repetition_penalty=cfg.eval.repetition_penalty,
    )
    metrics = text_metrics(preds, targets)
    # a constant output can score well on smoothed sentence BLEU; this exposes it
    metrics["distinct_predictions"] = len(set(preds)) / max(len(preds), 1)
    metrics["eval_seconds"] = time.perf_counter() - t0
    metrics["eval_examples"] = len(examples)
    rows = [{"func_name": e.func_name, "path": e.path, "line": e.line, "prediction": p, "reference": t}
            for e, p, t in zip(examples, preds, targets)]
    return metrics, rows


def train_run(cfg: RunConfig, run_dir: Path, *, progress: bool = True) -> dict:
    """Train ``cfg`` into a fresh ``run_dir``; returns the metrics written to metrics.json."""
    import yaml

    run_dir = Path(run_dir)
    cfg = fingerprint.resolve_paths(cfg)  # config.yaml is read later from anywhere: no relative paths
    if _is_main():
        rundir.create(run_dir)  # owned by this process until _finish
        rundir.write_text(run_dir / rundir.CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    _barrier()
    return _finish(cfg, run_dir, progress, resume=False)


def _is_main() -> bool:
    """True in the one process that writes files (always, without ``accelerate launch``/torchrun)."""
    from peftlab.train.loop import process_state

    return process_state().is_main_process


def _barrier() -> None:
    from peftlab.train.loop import process_state

    process_state().wait_for_everyone()


def resume_run(run_dir: Path, *, progress: bool = True) -> dict:
    """Continue an interrupted run from its newest checkpoint (same config, same batches)."""
    from peftlab.train.checkpoint import set_aside_damaged

    run_dir = Path(run_dir)
    rundir.require_resumable(run_dir, own=_is_main())  # not a run, complete, or owned by a live process
    cfg = load_run_config(run_dir)
    trained = rundir.trained(run_dir)  # training was over (adapter saved): only scoring is left
    ckpts = [] if trained else set_aside_damaged(run_dir / rundir.CHECKPOINTS)
    step = rundir.read_trained(run_dir)["steps"] if trained else (
        json.loads((ckpts[-1] / "state.json").read_text())["step"] if ckpts else 0)
    _barrier()  # every process has read the checkpoint list before the main one edits the log
    if _is_main():
        if not trained:
            _truncate_log(run_dir / rundir.TRAIN_LOG, step)  # rows after the checkpoint will be logged again
        rundir.set_status(run_dir, "running", resumed_from_step=step, error=None)
    log.info("resuming %s from step %d", run_dir, step)
    return _finish(cfg, run_dir, progress, resume=True)


def _truncate_log(path: Path, step: int) -> None:
    if path.exists():
        rows = [(ln, _row(ln)) for ln in path.read_text().splitlines()]
        keep = [ln for ln, row in rows if row is not None and row["step"] <= step]
        rundir.write_text(path, "".join(ln + "\n" for ln in keep))


def _row(line: str) -> Optional[dict]:
    try:
        return json.loads(line)
    except ValueError:  # blank, or a row torn by a kill in the middle of writing it
        return None


def _finish(cfg: RunConfig, run_dir: Path, progress: bool, resume: bool) -> dict:
    main = _is_main()
    try:
        with rundir.stop_on_signals():  # SIGTERM: recorded as interrupted, resumable
            if resume and rundir.trained(run_dir):  # training was over: only scoring is left
                metrics = _score_trained(cfg, run_dir) if main else {}
            else:
                metrics = _train_and_score(cfg, run_dir, progress and main, resume)
            if main:
                rundir.write_json(run_dir / rundir.METRICS, metrics)
                rundir.set_status(run_dir, "complete", finished=rundir.now())
    except BaseException as e:
        if main:
            raise rundir.stopped(run_dir, e)  # failed or interrupted, recorded; the message says what next
        raise
    finally:
        if main:
            rundir.release(run_dir)
    _barrier()
    return metrics


def _train_and_score(cfg: RunConfig, run_dir: Path, progress: bool, resume: bool = False) -> dict:
    from peftlab.data.seq2seq import BatchPlan, encode_pairs
    from peftlab.methods.io import save_adapter
    from peftlab.train.loop import LoopOptions, jsonl_writer, result_dict, train

    d = cfg.data
    train_src, train_tgt = prompts(d, load_examples(d, d.train_split, d.max_train_examples))
    eval_src, eval_tgt = prompts(d, load_examples(d, d.eval_split, d.max_eval_examples))
    test = load_examples(d, d.test_split, cfg.eval.max_examples)  # every split read before training
    if _is_main():
        fingerprint.record(run_dir, d, (d.train_split, d.eval_split, d.test_split))
    loaded, state = build(cfg)
    model, tok = loaded.model, loaded.tokenizer
    log.info("%s", state.summary(model))
    train_enc = encode_pairs(tok, train_src, train_tgt, d.max_source_length, d.max_target_length)
    eval_enc = encode_pairs(tok, eval_src, eval_tgt, d.max_source_length, d.max_target_length)
    pad = tok.pad_token_id
    result = train(
        model, BatchPlan(train_enc, cfg.train.batch_size, pad, seed=cfg.train.seed), cfg.train,
        eval_plan=BatchPlan(eval_enc, cfg.eval.batch_size, pad, seed=0),
        log_row=jsonl_writer(run_dir / rundir.TRAIN_LOG) if _is_main() else (lambda row: None),
        options=LoopOptions(progress=progress, desc=cfg.display_name(), resume=resume,
                            checkpoint_dir=run_dir / rundir.CHECKPOINTS if cfg.train.checkpoint_every else None,
                            checkpoint_every=cfg.train.checkpoint_every, keep_checkpoints=cfg.train.keep_checkpoints),
    )
    if not _is_main():  # other data-parallel processes stop here; the main one saves and scores
        return {}
    if result.gathered is not None:  # FSDP left the model sharded: score a whole copy with the trained tensors
        del model
        loaded, state = build(cfg)
        model = loaded.model
        from peftlab.train.checkpoint import copy_into
        from peftlab.train.loop import process_state

        copy_into(model, result.gathered)
        model.to(process_state().device)
    save_adapter(model, run_dir / rundir.ADAPTER, base_model_record(cfg))
    total = state.total_params
    trainable = state.trainable_params(model)
    trained = {
        "method": cfg.display_name(),
        "methods": [to_dict(m) for m in cfg.methods],
        "model": cfg.model.name,
        "model_init": cfg.model.init,
        "trainable_params": trainable,
        "trainable_params_by_method": state.counts(model),
        "total_params": total,
        "trainable_pct": 100.0 * trainable / max(total, 1),
        **result_dict(result),
        "train_examples": len(train_enc),
        "truncated_sources": train_enc.truncated_sources,
        "truncated_targets": train_enc.truncated_targets,
        "device": device_name(),
        "versions": versions(),
    }
    rundir.write_json(run_dir / rundir.TRAINED, trained)  # from here a failure in scoring loses nothing
    return _scored(cfg, run_dir, model, tok, test, trained)


def _scored(cfg: RunConfig, run_dir: Path, model, tok, test, trained: dict) -> dict:
    """Score the test split and write predictions; the metrics are ``trained`` plus the scores."""
    text, rows = score(model, tok, cfg, test)
    _write_predictions(run_dir, rows)
    return {
        **trained,
        **{k: text[k] for k in ("bleu", "codexglue_bleu", "rouge_l", "distinct_predictions")},
        "test_split": cfg.data.test_split,
        "test_examples": text["eval_examples"],
        "eval_seconds": text["eval_seconds"],
    }


def _score_trained(cfg: RunConfig, run_dir: Path) -> dict:
    """Resume a run whose training was over (its adapter saved) but whose scoring was not."""
    _, loaded = load_trained(run_dir)
    test = load_examples(cfg.data, cfg.data.test_split, cfg.eval.max_examples)
    return _scored(cfg, run_dir, loaded.model, loaded.tokenizer, test, rundir.read_trained(run_dir))


def _write_predictions(run_dir: Path, rows: list[dict], name: str = rundir.PREDICTIONS) -> None:
    rundir.write_text(run_dir / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def load_run_config(run_dir: Path) -> RunConfig:
    data, lines = read_yaml(run_dir / rundir.CONFIG)
    return from_dict(RunConfig, data, source=str(run_dir / rundir.CONFIG), lines=lines)


def load_trained(run_dir: Path, *, full_precision: bool = False):
    """A fresh base model with the run's saved adapter loaded: ``(cfg, LoadedModel)``.

    ``full_precision``: load a quantized run's base unquantized (to merge or export into it)."""
    import dataclasses

    from peftlab.methods.io import load_adapter
    from peftlab.models.loading import load_model

    rundir.require_complete(run_dir)
    cfg = load_run_config(run_dir)
    spec = dataclasses.replace(cfg.model, quantize="none") if full_precision else cfg.model
    loaded = load_model(spec, seed=cfg.train.seed)
    load_adapter(loaded.model, run_dir / rundir.ADAPTER, base_model_record(cfg))
    return cfg, loaded


def evaluate_run(run_dir: Path, split: Optional[str] = None, max_examples: Optional[int] = None) -> dict:
    """Re-score a finished run on ``split`` from its saved adapter on a fresh base model."""
    run_dir = Path(run_dir)
    rundir.require_writable(run_dir, "peftlab eval writes its predictions there")
    cfg, loaded = load_trained(run_dir)
    split = split or cfg.data.test_split
    n = max_examples if max_examples is not None else cfg.eval.max_examples
    examples = load_examples(cfg.data, split, n)
    change = fingerprint.changed(run_dir, cfg.data, split)  # other data than the run saw: say so
    if change:
        log.warning("%s", change["message"])
    text, rows = score(loaded.model, loaded.tokenizer, cfg, examples)
    tag = f".{change['now']['sha256'][:12]}" if change else ""  # never overwrite the predictions of the data it saw
    _write_predictions(run_dir, rows, f"predictions.{split}.eval{tag}.jsonl")
    return {"split": split, **text, **({"data_changed": change["message"]} if change else {})}


def generate_one(run_dir: Path, code: str, func_name: Optional[str] = None) -> str:
    """Document the one function in ``code`` (or the one named ``func_name``) with a trained run."""
    ((_, doc),) = generate_docs(run_dir, code, func_name, only_one=True)
    return doc


def generate_docs(run_dir: Path, code: str, func_name: Optional[str] = None, *, where: str = "<code>",
                  only_one: bool = False) -> list[tuple[str, str]]:
    """``(name, documentation)`` for each function in ``code`` (one model load, one batch);
    ``func_name`` picks one. Text that is not Python, or holds no function, is refused."""
    from peftlab.data.code2doc import Code2DocExample, clean_code, functions_in
    from peftlab.evaluate.generate import generate_texts

    funcs = functions_in(code, where)
    if func_name is not None:
        funcs = [f for f in funcs if f[0] == func_name or f[0].rsplit(".", 1)[-1] == func_name][:1]
        if not funcs:
            names = ", ".join(n for n, _ in functions_in(code, where))
            raise DataError(f"{where}: no function named {func_name!r} (it has: {names})")
    if only_one and len(funcs) > 1:
        raise DataError(f"{where}: holds {len(funcs)} functions ({', '.join(n for n, _ in funcs)}); "
                        f"pick one with --func-name")
    cfg, loaded = load_trained(Path(run_dir))
    examples = [Code2DocExample(func_name=n.rsplit(".", 1)[-1], code=clean_code(c), target="") for n, c in funcs]
    srcs, _ = prompts(cfg.data, examples)
    texts = generate_texts(
        loaded.model, loaded.tokenizer, srcs, max_source_length=cfg.data.max_source_length,
        max_new_tokens=cfg.eval.max_new_tokens, num_beams=cfg.eval.num_beams, batch_size=cfg.eval.batch_size,
        mixed_precision=cfg.train.mixed_precision, no_repeat_ngram_size=cfg.eval.no_repeat_ngram_size,
        repetition_penalty=cfg.eval.repetition_penalty,
    )
    return [(n, t) for (n, _), t in zip(funcs, texts)]


def merge_run(run_dir: Path, out: Path) -> Path:
    """Write a finished run as a plain HF model directory (LoRA merged into the weights)."""
    from peftlab.methods.export import merged_model

    cfg, loaded = load_trained(Path(run_dir), full_precision=True)  # QLoRA: merge into the bf16/fp32 base
    model = merged_model(loaded.model)
    out = rundir.create_plain(Path(out))
    model.save_pretrained(str(out))
    loaded.tokenizer.save_pretrained(str(out))
    return out


def export_run(run_dir: Path, out: Path) -> Path:
    """Write a finished run's LoRA adapter in HF peft's format, naming exactly the base it was
    trained on (a random or config-overridden base is written beside it, in ``out/base``)."""
    from peftlab.methods.export import export_peft, exported_base

    cfg, loaded = load_trained(Path(run_dir), full_precision=True)
    out = rundir.create_plain(Path(out))
    base = exported_base(cfg.model, cfg.train.seed, loaded.source, out)
    revision = cfg.model.revision if base == loaded.source else None  # a base written here has none
    return export_peft(loaded.model, out, base, revision, spec=cfg.model)
