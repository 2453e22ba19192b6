"""What a finished run is used for: reloading it, re-scoring it, generating with it, its
perplexity, and leaving peftlab (a merged HF model, a peft adapter).

Each rebuilds the base model the run names and loads its saved adapter onto it (``load_trained``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from peftlab.lab import fingerprint, rundir
from peftlab.errors import DataError
from peftlab.lab.run import load_trained
from peftlab.lab.scoring import perplexity_scores, perplexity_texts, score, write_predictions
from peftlab.lab.rundata import load_examples
from peftlab.schema import RunConfig

log = logging.getLogger(__name__)


def evaluate_run(run_dir: Path, split: Optional[str] = None, max_examples: Optional[int] = None,
                 decoding: Optional[dict] = None) -> dict:
    """Re-score a finished run on ``split`` from its saved adapter on a fresh base model, each task
    decoding as the run chose on validation (no selection again); ``decoding``: settings over that."""
    from peftlab.lab.evals import run_decodings

    run_dir = Path(run_dir)
    rundir.require_writable(run_dir, "peftlab eval writes its predictions there")
    cfg, loaded = load_trained(run_dir)
    split = split or cfg.data.test_split
    n = max_examples if max_examples is not None else cfg.eval.max_examples
    causal = loaded.family.kind == "causal"
    examples = load_examples(cfg.data, split, n, causal=causal, tokenizer=loaded.tokenizer)
    change = fingerprint.changed(run_dir, cfg.data, split)  # other data than the run saw: say so
    if change:
        log.warning("%s", change["message"])
    chosen = run_decodings(run_dir, cfg, decoding)
    scores, rows = score(loaded.model, loaded.tokenizer, cfg, examples, decodings=chosen)
    tag = f".{change['tag']}" if change else ""  # never overwrite the predictions of the data it saw
    write_predictions(run_dir, rows, f"predictions.{split}.eval{tag}.jsonl")
    return {"split": split, **scores, **({"data_changed": change["message"]} if change else {})}


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
    return {"perplexity_path": path, **perplexity_scores(loaded.model, loaded.tokenizer, cfg, texts, window, stride)}


def generate_one(run_dir: Path, code: Optional[str] = None, func_name: Optional[str] = None, *,
                 prompt: Optional[str] = None, decoding: Optional[dict] = None,
                 instruction: Optional[str] = None, input: str = "") -> str:
    """One output of a trained run: document the one function in ``code`` (or the one named
    ``func_name``; a code→doc run), continue ``prompt`` (text given as is) or answer
    ``instruction`` (+ ``input``) in an instruction run's template. It decodes as the run chose on
    validation (``eval.select``; else its eval settings); ``decoding`` overrides that (beams, sampling...)."""
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
        (out,) = _generate(cfg, loaded, [task.render(instruction, input)], task.prompt_tail,
                           _settings(run_dir, cfg, decoding))
    else:
        (out,) = _generate(cfg, loaded, [prompt], "", _settings(run_dir, cfg, decoding))
    return out


def generate_docs(run_dir: Path, code: str, func_name: Optional[str] = None, *, where: str = "<code>",
                  only_one: bool = False, decoding: Optional[dict] = None) -> list[tuple[str, str]]:
    """``(name, documentation)`` for each function in ``code`` (one model load, one batch);
    ``func_name`` picks one. Text that is not Python, or holds no function, is refused. Decoded as
    in ``generate_one``."""
    from peftlab.data.pycode import functions_in
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
    return list(zip((n for n, _ in funcs), _generate(cfg, loaded, texts, task.prompt_tail,
                                                     _settings(run_dir, cfg, decoding))))


def _settings(run_dir: Path, cfg: RunConfig, overrides: Optional[dict]) -> dict:
    """The decoding of the run's first task (the one generate renders for): its choice on
    validation, the user's flags on top. The choice is said, since it is not what the config reads."""
    from peftlab.lab.evals import run_decodings

    chosen = run_decodings(Path(run_dir), cfg)[cfg.data.tasks[0].describe()]
    if chosen:
        log.info("decoding as the run chose on validation: %s%s", _listed(chosen),
                 f"; overridden: {_listed(overrides)}" if overrides else "")
    return {**chosen, **(overrides or {})}


def _listed(settings: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def _generate(cfg: RunConfig, loaded, texts: list[str], tail: str, settings: dict) -> list[str]:
    import dataclasses

    from peftlab.data.seq2seq import prompt_ids, tail_tokens
    from peftlab.evaluate.generate import Decoding, generate_ids

    model, tok = loaded.model, loaded.tokenizer
    limit = cfg.data.max_source_length
    ids, cut, longest = prompt_ids(tok, texts, limit, causal=not model.config.is_encoder_decoder,
                                   keep_tail=tail_tokens(tok, tail))
    if cut:  # what the model sees is not what was given: say so (as training and scoring count it)
        log.warning("%s of %d inputs longer than the run's data.max_source_length (%d tokens, the longest %d): "
                    "%s, as the run's training and scoring cut theirs",
                    "one" if cut == 1 else cut, len(texts), limit, longest,
                    "cut before the closing instruction the task adds" if tail else f"only its first {limit} tokens kept")
    dec = dataclasses.replace(Decoding.of(cfg.eval), **settings)
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
    from peftlab.methods.export import export_peft, exported_base, peft_form

    cfg, loaded = load_trained(Path(run_dir), full_precision=True)
    form = peft_form(loaded.model)  # a method peft cannot hold is refused before anything is written
    out = rundir.create_plain(Path(out))
    try:
        base = exported_base(cfg.model, cfg.train.seed, loaded.source, out)
        revision = cfg.model.revision if base == loaded.source else None  # a base written here has none
        return export_peft(loaded.model, out, base, revision, spec=cfg.model, form=form)
    except BaseException:  # a full disk half-way: out was new or empty, so it is left so again
        _empty(out)
        raise


def _empty(directory: Path) -> None:
    import shutil

    for child in directory.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
