"""One run end to end: config -> model + methods -> data -> train -> generate -> metrics, on disk.

``train_run`` writes a run directory (see ``peftlab.rundir``); ``evaluate_run`` rebuilds the base
model, loads the saved adapter and re-scores a split; ``generate_one`` documents one function.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from peftlab import fingerprint, rundir
from peftlab.config import from_dict, read_yaml, to_dict
from peftlab.env import hardware, versions
from peftlab.errors import DataError
from peftlab.schema import DataSpec, RunConfig

if TYPE_CHECKING:
    from peftlab.tasks import Example

log = logging.getLogger(__name__)


def base_model_record(cfg: RunConfig) -> dict:
    """What identifies the base model an adapter belongs to (seed matters for random init)."""
    rec = {"name": cfg.model.name, "init": cfg.model.init, "config": dict(cfg.model.config)}
    if cfg.model.init == "random":
        rec["seed"] = cfg.train.seed
    return rec


def load_examples(data: DataSpec, split: str, max_examples: Optional[int], causal: bool = False) -> list[tuple[int, "Example"]]:
    """``(task index, example)`` rows of a split over the run's tasks; each task capped at
    ``max_examples`` by a fixed-seed sample, so every method sees the same rows. ``causal``: as a
    decoder reads them (see ``for_decoder``)."""
    rows = []
    for t, task in enumerate(data.tasks):
        examples = task.examples(split, max_examples)
        if not examples:
            raise DataError(f"data.task {task.describe()}: split {split!r} is empty")
        rows += [(t, e) for e in examples]
    return for_decoder(data, rows) if causal else rows


def for_decoder(data: DataSpec, rows) -> list:
    """``rows`` rendered as a decoder reads them (a task may word its prompt differently)."""
    return [(t, data.tasks[t].render_for_decoder(e)) for t, e in rows]


def encode_rows(tok, data: DataSpec, rows, causal: bool):
    """Token ids for ``rows`` (see ``load_examples``), each task's prompt tail kept when cut."""
    from peftlab.data.seq2seq import Encoded, encode_pairs

    out = Encoded([], [], task_ids=[])
    for t, task in enumerate(data.tasks):
        mine = [e for i, e in rows if i == t]
        if not mine:
            continue
        enc = encode_pairs(tok, [e.source for e in mine], [e.target for e in mine], data.max_source_length,
                           data.max_target_length, causal=causal, tail=task.prompt_tail, task_ids=[t] * len(mine))
        out.input_ids += enc.input_ids
        out.labels += enc.labels
        out.task_ids += enc.task_ids
        out.truncated_sources += enc.truncated_sources
        out.truncated_targets += enc.truncated_targets
        out.longest_source = max(out.longest_source, enc.longest_source)
    return out


def check_lengths(cfg: RunConfig, model) -> None:
    """A decoder sees prompt + target as one sequence: it must fit its position table."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if model.config.is_encoder_decoder or not limit:
        return
    need = cfg.data.max_source_length + cfg.data.max_target_length
    if need > limit:
        from peftlab.errors import ConfigError

        raise ConfigError(f"data.max_source_length + data.max_target_length = {need} exceeds the model's "
                          f"max_position_embeddings ({limit}); lower data.max_source_length")


def wants_task_ids(cfg: RunConfig) -> bool:
    """Some method (HyperFormer) conditions on each row's task: batches then carry ``task_ids``."""
    return any("task_ids" in getattr(m, "batch_keys", ()) for m in cfg.methods)


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


def score(model, tokenizer, cfg: RunConfig, rows, valid_rows=()) -> tuple[dict, list[dict]]:
    """Each task's metrics on its ``rows`` (see ``load_examples``), and the prediction rows.

    One task: its metrics at the top level too (``bleu``, ``accuracy``...); always per task under
    ``task_metrics``. With ``eval.select``, a generation task's decoding is chosen on its
    ``valid_rows`` first (``peftlab.evaluate.select``)."""
    from peftlab.data.seq2seq import tail_tokens
    from peftlab.evaluate.generate import Decoding
    from peftlab.evaluate.select import score_selected
    from peftlab.tasks.base import sample_rows

    multi = len(cfg.data.tasks) > 1
    per_task, out_rows = {}, []
    for t, task in enumerate(cfg.data.tasks):
        examples = [e for i, e in rows if i == t]
        if not examples:
            continue
        valid = sample_rows([e for i, e in valid_rows if i == t], cfg.eval.select_examples) if cfg.eval.select else []
        metrics, preds = score_selected(
            model, tokenizer, task, examples, valid, space=cfg.eval.select, max_source_length=cfg.data.max_source_length,
            decoding=Decoding.of(cfg.eval), batch_size=cfg.eval.batch_size,
            mixed_precision=cfg.train.mixed_precision, keep_tail=tail_tokens(tokenizer, task.prompt_tail),
            task_id=t if multi and wants_task_ids(cfg) else None,
        )
        per_task[task.describe()] = metrics
        out_rows += [{**({"task": task.describe()} if multi else {}), **e.meta, "prediction": p, "reference": e.target}
                     for e, p in zip(examples, preds)]
    flat = dict(next(iter(per_task.values()))) if len(per_task) == 1 else {
        "eval_seconds": sum(m["eval_seconds"] for m in per_task.values()),
        "eval_examples": sum(m["eval_examples"] for m in per_task.values())}
    flat["task_metrics"] = per_task
    return flat, out_rows


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
    from peftlab.data.seq2seq import BatchPlan
    from peftlab.methods.io import save_adapter
    from peftlab.train.loop import LoopOptions, jsonl_writer, result_dict, train

    d = cfg.data
    # every split is read before the model is built: a missing or empty test split costs nothing
    train_rows = load_examples(d, d.train_split, d.max_train_examples)
    eval_rows = load_examples(d, d.eval_split, d.max_eval_examples)
    test = load_examples(d, d.test_split, cfg.eval.max_examples)
    if _is_main():
        fingerprint.record(run_dir, d, (d.train_split, d.eval_split, d.test_split))
    loaded, state = build(cfg)
    model, tok = loaded.model, loaded.tokenizer
    causal = loaded.family.kind == "causal"
    check_lengths(cfg, model)
    perplexity_texts(cfg, causal)  # read before training: a bad path must not cost a run
    log.info("%s", state.summary(model))
    if causal:
        train_rows, eval_rows, test = (for_decoder(d, r) for r in (train_rows, eval_rows, test))
    train_enc = encode_rows(tok, d, train_rows, causal)
    eval_enc = encode_rows(tok, d, eval_rows, causal)
    pad, with_ids = tok.pad_token_id, wants_task_ids(cfg)
    result = train(
        model, BatchPlan(train_enc, cfg.train.batch_size, pad, seed=cfg.train.seed, with_task_ids=with_ids), cfg.train,
        eval_plan=BatchPlan(eval_enc, cfg.eval.batch_size, pad, seed=0, with_task_ids=with_ids),
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
    return _scored(cfg, run_dir, model, tok, (train_rows, eval_rows, test), trained)


def _per_task(state, model, data: DataSpec) -> dict:
    """Multi-task methods: trainable parameters shared by all tasks and owned by each, by task name."""
    split = state.per_task(model)
    if split is None:
        return {}
    names = [t.describe() for t in data.tasks]
    by_task = {names[i] if i < len(names) else f"task {i}": n for i, n in enumerate(split["by_task"])}
    return {"trainable_params_per_task": {"shared": split["shared"], "by_task": by_task}}


def _scored(cfg: RunConfig, run_dir: Path, model, tok, splits, trained: dict) -> dict:
    """Score the test split (decoding chosen on validation when ``eval.select`` asks) and write
    predictions; the metrics are ``trained``, the scores, the perplexity (``eval.perplexity``) and
    the task floors."""
    train_rows, eval_rows, test = splits
    scores, rows = score(model, tok, cfg, test, eval_rows)
    ppl_texts = perplexity_texts(cfg, not model.config.is_encoder_decoder)
    if ppl_texts:
        scores.update(_perplexity(model, tok, cfg, ppl_texts))
    _write_predictions(run_dir, rows)
    return {
        **trained,
        **{k: v for k, v in scores.items() if k not in ("eval_examples", "truncated_prompts")},
        "test_split": cfg.data.test_split,
        "test_examples": scores["eval_examples"],
        **_floors(cfg, train_rows, eval_rows, test, scores),
    }


def _score_trained(cfg: RunConfig, run_dir: Path) -> dict:
    """Resume a run whose training was over (its adapter saved) but whose scoring was not."""
    _, loaded = load_trained(run_dir)
    d, causal = cfg.data, loaded.family.kind == "causal"
    splits = (load_examples(d, d.train_split, d.max_train_examples, causal),
              load_examples(d, d.eval_split, d.max_eval_examples, causal),
              load_examples(d, d.test_split, cfg.eval.max_examples, causal))
    return _scored(cfg, run_dir, loaded.model, loaded.tokenizer, splits, rundir.read_trained(run_dir))


def _floors(cfg: RunConfig, train_rows, valid_rows, test_rows, scores: dict) -> dict:
    """``floors`` (model-free baselines per task, on the same rows) and ``beats_floors`` for metrics.json."""
    if not cfg.eval.floors:
        return {}
    from peftlab.evaluate.floors import beats, task_floors

    floors = task_floors(cfg.data.tasks, train_rows, valid_rows, test_rows)
    return {"floors": floors, "beats_floors": {t: beats(scores["task_metrics"][t], f) for t, f in floors.items()}}


def perplexity_texts(cfg: RunConfig, causal: bool) -> Optional[list[str]]:
    """The texts of ``eval.perplexity`` (None when unset); a seq2seq model is refused by name."""
    from peftlab.errors import ConfigError
    from peftlab.evaluate.perplexity import read_texts

    if not cfg.eval.perplexity:
        return None
    if not causal:
        raise ConfigError(f"eval.perplexity: perplexity needs a causal LM; {cfg.model.name} is an encoder-decoder")
    return [text for _, text in read_texts(cfg.eval.perplexity)]


def _perplexity(model, tok, cfg: RunConfig, texts: list[str], window: Optional[int] = None,
                stride: Optional[int] = None) -> dict:
    """``{"ppl", "ppl_tokens", ...}`` of ``model`` on ``texts`` with the run's window settings."""
    from peftlab.errors import ConfigError
    from peftlab.evaluate.perplexity import default_window, perplexity

    if window is None:
        window = cfg.eval.perplexity_window or default_window(model, cfg.data.max_source_length
                                                              + cfg.data.max_target_length)
    if stride is None:
        stride = cfg.eval.perplexity_stride or max(window // 2, 1)
    if window < 2 or not 1 <= stride <= window:
        raise ConfigError(f"eval.perplexity: window must be >= 2 and stride in [1, window]; got window {window}, "
                          f"stride {stride}")
    out = perplexity(model, tok, texts, window=window, stride=stride, batch_size=cfg.eval.batch_size,
                     mixed_precision=cfg.train.mixed_precision)
    return {"ppl": out["ppl"], "ppl_tokens": out["tokens"], "ppl_window": out["window"], "ppl_stride": out["stride"]}


def perplexity_run(run_dir: Path, path: Optional[str] = None, window: Optional[int] = None,
                   stride: Optional[int] = None) -> dict:
    """Perplexity of a finished causal run (its adapter on a fresh base) on ``path`` (default: the
    run's ``eval.perplexity``): ``peftlab eval RUN --perplexity PATH``."""
    import dataclasses

    from peftlab.errors import ConfigError

    cfg, loaded = load_trained(Path(run_dir))
    path = path or cfg.eval.perplexity
    if not path:
        raise ConfigError("eval --perplexity: give a PATH (file, directory or stdlib); this run sets no eval.perplexity")
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, perplexity=path))
    texts = perplexity_texts(cfg, loaded.family.kind == "causal")
    return {"perplexity_path": path, **_perplexity(loaded.model, loaded.tokenizer, cfg, texts, window, stride)}


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
    causal = loaded.family.kind == "causal"
    examples = load_examples(cfg.data, split, n, causal=causal)
    valid = load_examples(cfg.data, cfg.data.eval_split, cfg.data.max_eval_examples, causal) if cfg.eval.select else []
    change = fingerprint.changed(run_dir, cfg.data, split)  # other data than the run saw: say so
    if change:
        log.warning("%s", change["message"])
    scores, rows = score(loaded.model, loaded.tokenizer, cfg, examples, valid)
    tag = f".{change['tag']}" if change else ""  # never overwrite the predictions of the data it saw
    _write_predictions(run_dir, rows, f"predictions.{split}.eval{tag}.jsonl")
    return {"split": split, **scores, **({"data_changed": change["message"]} if change else {})}


def generate_one(run_dir: Path, code: Optional[str] = None, func_name: Optional[str] = None, *,
                 prompt: Optional[str] = None, decoding: Optional[dict] = None,
                 instruction: Optional[str] = None, input: str = "") -> str:
    """One output of a trained run: document the one function in ``code`` (or the one named
    ``func_name``; a code→doc run), continue ``prompt`` (text given as is) or answer
    ``instruction`` (+ ``input``) in an instruction run's template. ``decoding`` overrides the
    run's eval settings (beams, sampling...)."""
    from peftlab.errors import ConfigError

    if sum(x is not None for x in (code, prompt, instruction)) != 1:
        raise ConfigError("generate: give exactly one of --code FILE, --prompt TEXT or --instruction TEXT")
    if code is not None:
        ((_, doc),) = generate_docs(run_dir, code, func_name, only_one=True, decoding=decoding)
        return doc
    cfg, loaded = load_trained(Path(run_dir))
    task = cfg.data.tasks[0]
    if instruction is not None:
        if not hasattr(task, "render"):
            raise ConfigError(f"generate --instruction: this run's task is {task.describe()}, not an instruction "
                              f"task; use --prompt")
        (out,) = _generate(cfg, loaded, [task.render(instruction, input)], task.prompt_tail, decoding)
    else:
        (out,) = _generate(cfg, loaded, [prompt], "", decoding)
    return out


def generate_docs(run_dir: Path, code: str, func_name: Optional[str] = None, *, where: str = "<code>",
                  only_one: bool = False, decoding: Optional[dict] = None) -> list[tuple[str, str]]:
    """``(name, documentation)`` for each function in ``code`` (one model load, one batch);
    ``func_name`` picks one. Text that is not Python, or holds no function, is refused."""
    from peftlab.data.code2doc import functions_in
    from peftlab.errors import ConfigError

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
    task = cfg.data.tasks[0]
    if not hasattr(task, "example_from_code"):
        raise ConfigError(f"generate --code: this run's task is {task.describe()}, not code2doc; use --prompt")
    texts = [task.example_from_code(c, n.rsplit(".", 1)[-1]).source for n, c in funcs]
    return list(zip((n for n, _ in funcs), _generate(cfg, loaded, texts, task.prompt_tail, decoding)))


def _generate(cfg: RunConfig, loaded, texts: list[str], tail: str, decoding: Optional[dict]) -> list[str]:
    import dataclasses

    from peftlab.data.seq2seq import prompt_ids, tail_tokens
    from peftlab.evaluate.generate import Decoding, generate_ids

    model, tok = loaded.model, loaded.tokenizer
    ids, _, _ = prompt_ids(tok, texts, cfg.data.max_source_length, causal=not model.config.is_encoder_decoder,
                           keep_tail=tail_tokens(tok, tail))
    dec = dataclasses.replace(Decoding.of(cfg.eval), **(decoding or {}))
    return generate_ids(model, tok, ids, dec, batch_size=cfg.eval.batch_size, mixed_precision=cfg.train.mixed_precision)


def merge_run(run_dir: Path, out: Path) -> Path:
    """Write a finished run as a plain HF model directory (LoRA or IA3 merged into the weights)."""
    from peftlab.methods.export import merged_model

    cfg, loaded = load_trained(Path(run_dir), full_precision=True)  # QLoRA: merge into the bf16/fp32 base
    model = merged_model(loaded.model)
    out = rundir.create_plain(Path(out))
    model.save_pretrained(str(out))
    loaded.tokenizer.save_pretrained(str(out))
    return out


def export_run(run_dir: Path, out: Path) -> Path:
    """Write a finished run's adapter in HF peft's format, naming exactly the base it was
    trained on (a random or config-overridden base is written beside it, in ``out/base``)."""
    from peftlab.methods.export import export_peft, exported_base

    cfg, loaded = load_trained(Path(run_dir), full_precision=True)
    out = rundir.create_plain(Path(out))
    base = exported_base(cfg.model, cfg.train.seed, loaded.source, out)
    revision = cfg.model.revision if base == loaded.source else None  # a base written here has none
    return export_peft(loaded.model, out, base, revision, spec=cfg.model)
