"""One run end to end: config -> model + methods -> data -> train -> score -> metrics, on disk.

``train_run`` writes a run directory (see ``peftlab.lab.rundir``), ``resume_run`` continues one;
``load_trained`` rebuilds a finished run's model. The data side is ``peftlab.lab.rundata``; what a
finished run is used for afterwards (re-scoring, generating, perplexity, merge, export) is
``peftlab.lab.finished``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from peftlab.lab import fingerprint, rundir
from peftlab.config import from_dict, read_yaml, to_dict
from peftlab.device import hardware
from peftlab.provenance import versions
from peftlab.lab.rundata import (check_lengths, data_warnings, encode_rows, for_decoder, load_examples,
                                 wants_task_ids)
from peftlab.lab.scoring import perplexity_texts, scored
from peftlab.schema import DataSpec, RunConfig
from peftlab.train.trackers import Tracking

log = logging.getLogger(__name__)


def base_model_record(cfg: RunConfig) -> dict:
    """What identifies the base model an adapter belongs to (seed matters for random init)."""
    from peftlab.models.identity import weights_fingerprint
    from peftlab.models.loading import resolve_model_name

    rec = {"name": cfg.model.name, "init": cfg.model.init, "config": dict(cfg.model.config)}
    if cfg.model.init == "random":
        rec["seed"] = cfg.train.seed
    weights = weights_fingerprint(resolve_model_name(cfg.model.name), cfg.model.revision, cfg.model.init)
    if weights is not None:  # which weights, not only which name (checked where the adapter is loaded)
        rec["weights"] = weights
    return rec


def build(cfg: RunConfig):
    """The base model with the config's methods applied: ``(LoadedModel, PeftState)``."""
    from peftlab.methods import apply_methods
    from peftlab.models.loading import load_model

    import torch

    loaded = load_model(cfg.model, seed=cfg.train.seed)
    with torch.random.fork_rng(devices=[]):  # method init (LoRA's A, ...) is a function of the seed alone
        torch.manual_seed(cfg.train.seed + 1)
        state = apply_methods(loaded.model, run_methods(cfg), loaded.family)
    return loaded, state


def run_methods(cfg: RunConfig) -> list:
    """The config's methods as a run applies them: a multi-task method (HyperFormer) sized to the
    run's tasks (``sized_for``: ``tasks: null`` becomes the number of ``data.task`` entries)."""
    from peftlab.config import FieldError
    from peftlab.errors import ConfigError

    out = []
    for i, m in enumerate(cfg.methods):
        try:
            out.append(m.sized_for(len(cfg.data.tasks)) if hasattr(m, "sized_for") else m)
        except FieldError as e:
            raise ConfigError(f"methods.{i}.{e.field}: {e}") from None
    return out


def train_run(cfg: RunConfig, run_dir: Path, *, progress: bool = True, name: Optional[str] = None,
              group: Optional[str] = None) -> dict:
    """Train ``cfg`` into a fresh ``run_dir``; returns the metrics written to metrics.json. ``name`` and
    ``group``: the run as ``train.report_to``'s trackers show it (default: the directory's name)."""
    import yaml

    run_dir = Path(run_dir)
    cfg = fingerprint.resolve_paths(cfg)  # config.yaml is read later from anywhere: no relative paths
    if _is_main():
        rundir.create(run_dir)  # owned by this process until _finish
        rundir.write_text(run_dir / rundir.CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    _barrier()
    return _finish(cfg, run_dir, progress, resume=False, tracking=Tracking.of(cfg, run_dir, name, group))


def _is_main() -> bool:
    """True in the one process that writes files (always, without ``accelerate launch``/torchrun)."""
    from peftlab.train.loop import process_state

    return process_state().is_main_process


def _barrier() -> None:
    from peftlab.train.loop import process_state

    process_state().wait_for_everyone()


def resume_run(run_dir: Path, *, progress: bool = True, name: Optional[str] = None,
               group: Optional[str] = None) -> dict:
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
    return _finish(cfg, run_dir, progress, resume=True, tracking=Tracking.of(cfg, run_dir, name, group))


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


def _finish(cfg: RunConfig, run_dir: Path, progress: bool, resume: bool, tracking=None) -> dict:
    main = _is_main()
    try:
        with rundir.stop_on_signals():  # SIGTERM: recorded as interrupted, resumable
            if resume and rundir.trained(run_dir):  # training was over: only scoring is left
                metrics = _score_trained(cfg, run_dir) if main else {}
            else:
                metrics = _train_and_score(cfg, run_dir, progress and main, resume, tracking)
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


def _train_and_score(cfg: RunConfig, run_dir: Path, progress: bool, resume: bool = False, tracking=None) -> dict:
    from peftlab.data.seq2seq import BatchPlan
    from peftlab.methods.io import save_adapter
    from peftlab.train.loop import LoopOptions, jsonl_writer, result_dict, train
    from peftlab.train.trackers import check_available

    d = cfg.data
    check_available(cfg.train.report_to)  # a tracker that cannot start must not cost the data and the model
    # every split is read before the model is built: a missing or empty test split costs nothing
    train_rows = load_examples(d, d.train_split, d.max_train_examples)
    eval_rows = load_examples(d, d.eval_split, d.max_eval_examples)
    test = load_examples(d, d.test_split, cfg.eval.max_examples)
    if _is_main():
        warnings = data_warnings(d, train_rows, test)
        for warning in warnings:
            log.warning("%s", warning)
        fingerprint.record(run_dir, d, (d.train_split, d.eval_split, d.test_split), base_model_record(cfg),
                           warnings=warnings)
    loaded, state = build(cfg)
    model, tok = loaded.model, loaded.tokenizer
    causal = loaded.family.kind == "causal"
    check_lengths(cfg, model)
    perplexity_texts(cfg, causal)  # read before training: a bad path must not cost a run
    log.info("%s", state.summary(model))
    if causal:
        train_rows, eval_rows, test = (for_decoder(d, r, tok) for r in (train_rows, eval_rows, test))
    train_enc = encode_rows(tok, d, train_rows, causal)
    eval_enc = encode_rows(tok, d, eval_rows, causal)
    pad, with_ids = tok.pad_token_id, wants_task_ids(cfg)
    result = train(
        model, BatchPlan(train_enc, cfg.train.batch_size, pad, seed=cfg.train.seed, with_task_ids=with_ids), cfg.train,
        eval_plan=BatchPlan(eval_enc, cfg.eval.batch_size, pad, seed=0, with_task_ids=with_ids),
        log_row=jsonl_writer(run_dir / rundir.TRAIN_LOG) if _is_main() else (lambda row: None),
        options=LoopOptions(progress=progress, desc=cfg.display_name(), resume=resume,
                            checkpoint_dir=run_dir / rundir.CHECKPOINTS if cfg.train.checkpoint_every else None,
                            checkpoint_every=cfg.train.checkpoint_every, keep_checkpoints=cfg.train.keep_checkpoints,
                            tracking=tracking),
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
    save_adapter(model, run_dir / rundir.ADAPTER, base_model_record(cfg), fold=True)
    total = state.total_params
    trainable = state.trainable_params(model)
    trained = {
        "method": cfg.display_name(),
        "methods": [to_dict(m) for m in cfg.methods],
        "model": cfg.model.name,
        "model_init": cfg.model.init,
        "task": " + ".join(t.describe() for t in d.tasks),
        "trainable_params": trainable,
        "trainable_params_by_method": state.counts(model),
        **_per_task(state, model, d),
        "total_params": total,
        "trainable_pct": 100.0 * trainable / max(total, 1),
        "mixed_precision": cfg.train.mixed_precision,  # requested; "precision" (from the loop) is what ran
        **result_dict(result),
        "train_examples": len(train_enc),
        "truncated_sources": train_enc.truncated_sources,
        "truncated_targets": train_enc.truncated_targets,
        **hardware(),  # device, cpu_capability, native_bf16
        "versions": versions(),
    }
    rundir.write_json(run_dir / rundir.TRAINED, trained)  # from here a failure in scoring loses nothing
    return scored(cfg, run_dir, model, tok, (train_rows, eval_rows, test), trained)


def _per_task(state, model, data: DataSpec) -> dict:
    """Multi-task methods: trainable parameters shared by all tasks and owned by each, by task name."""
    split = state.per_task(model)
    if split is None:
        return {}
    names = [t.describe() for t in data.tasks]
    by_task = {names[i] if i < len(names) else f"task {i}": n for i, n in enumerate(split["by_task"])}
    return {"trainable_params_per_task": {"shared": split["shared"], "by_task": by_task}}


def _score_trained(cfg: RunConfig, run_dir: Path) -> dict:
    """Resume a run whose training was over (its adapter saved) but whose scoring was not."""
    _, loaded = load_trained(run_dir)
    d, causal = cfg.data, loaded.family.kind == "causal"
    tok = loaded.tokenizer
    splits = (load_examples(d, d.train_split, d.max_train_examples, causal, tok),
              load_examples(d, d.eval_split, d.max_eval_examples, causal, tok),
              load_examples(d, d.test_split, cfg.eval.max_examples, causal, tok))
    return scored(cfg, run_dir, loaded.model, tok, splits, rundir.read_trained(run_dir))


def load_run_config(run_dir: Path) -> RunConfig:
    """A run's saved ``config.yaml``; a method field the save predates reads as what the run was
    trained with (``MethodConfig.legacy_defaults``), not today's default: such a run is then neither
    reused as if made with today's config nor resumed under another function."""
    from peftlab.methods.io import with_legacy_defaults

    data, lines = read_yaml(run_dir / rundir.CONFIG)
    if isinstance(data, dict) and isinstance(data.get("methods"), list):
        data = {**data, "methods": [with_legacy_defaults(m) for m in data["methods"]]}
    return from_dict(RunConfig, data, source=str(run_dir / rundir.CONFIG), lines=lines)


def load_trained(run_dir: Path, *, full_precision: bool = False):
    """A fresh base model with the run's saved adapter loaded: ``(cfg, LoadedModel)``.

    ``full_precision``: load a quantized run's base unquantized (to merge or export into it); else
    the model computes as the run scored it (``peftlab.train.fast.forward_levers``)."""
    import dataclasses

    from peftlab.methods.io import load_adapter
    from peftlab.models.loading import load_model

    rundir.require_complete(run_dir)
    cfg = load_run_config(run_dir)
    spec = dataclasses.replace(cfg.model, quantize="none") if full_precision else cfg.model
    loaded = load_model(spec, seed=cfg.train.seed)
    load_adapter(loaded.model, run_dir / rundir.ADAPTER, base_model_record(cfg))
    if not full_precision:
        from peftlab.train.fast import forward_levers

        forward_levers(loaded.model, cfg.train)
    return cfg, loaded


def same_config(run_dir: Path, cfg) -> bool:
    """Whether the run in ``run_dir`` was made with ``cfg`` (local paths resolved as a run records them)."""
    from peftlab.errors import ConfigError

    from peftlab.schema import RESULT_NEUTRAL_TRAIN

    def made_of(c) -> dict:  # how fast a run went and where it reported change nothing it made
        data = {k: v for k, v in to_dict(c).items() if k != "version"}
        return {**data, "train": {k: v for k, v in data["train"].items() if k not in RESULT_NEUTRAL_TRAIN}}

    try:
        return made_of(load_run_config(run_dir)) == made_of(fingerprint.resolve_paths(cfg))
    except ConfigError:  # no config.yaml (stopped before writing it) or an unreadable one
        return False
