"""The ``peftlab`` command: thin argument parsing over ``peftlab.run`` and friends.

Bad input (``PeftlabError``) prints one line naming the file/line/field and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peftlab", description="Parameter-efficient fine-tuning bench.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one config into a run directory")
    t.add_argument("config", type=Path, nargs="?", help="the run config (omit with --resume)")
    t.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=50 methods.0.r=16")
    t.add_argument("--out", type=Path, help="run directory (default runs/<config name>)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="re-score a finished run from its saved adapter")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--split", default=None)
    e.add_argument("--max-examples", type=int, default=None)

    g = sub.add_parser("generate", help="document one function with a finished run")
    g.add_argument("run_dir", type=Path)
    g.add_argument("--code", type=Path, required=True, help="a file with one Python function")
    g.add_argument("--func-name", default=None)

    mg = sub.add_parser("merge", help="write a finished run as a plain HF model (LoRA merged in)")
    mg.add_argument("run_dir", type=Path)
    mg.add_argument("--out", type=Path, required=True)

    ex = sub.add_parser("export", help="write a finished run's LoRA adapter in HF peft's format")
    ex.add_argument("run_dir", type=Path)
    ex.add_argument("--out", type=Path, required=True)

    c = sub.add_parser("compare", help="run several configs and print one comparison table")
    c.add_argument("configs", nargs="+", type=Path, help="config files or directories of them")
    c.add_argument("--out", type=Path, required=True, help="directory for the runs and the table")
    c.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every run")
    c.add_argument("--quiet", action="store_true")

    pt = sub.add_parser("pretrain", help="pretrain one of peftlab's small models from a recipe")
    pt.add_argument("config", type=Path)
    pt.add_argument("overrides", nargs="*", help="key=value overrides")
    pt.add_argument("--out", type=Path, required=True, help="the model directory to write")
    pt.add_argument("--work", type=Path, default=None, help="checkpoint directory (default OUT/checkpoints)")
    pt.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    pt.add_argument("--halt-at", type=int, default=None, help="stop after this step's checkpoint (resume later)")
    pt.add_argument("--quiet", action="store_true")

    sp = sub.add_parser("speed", help="time peftlab beside HF peft (same model, weights, batch, precision)")
    sp.add_argument("spec", type=Path, help="a speed spec, e.g. benchmarks/speed/cpu-t5-small.yaml")
    sp.add_argument("overrides", nargs="*", help="key=value overrides of the spec, e.g. reps=3")
    sp.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/speed/<spec>.json)")
    sp.add_argument("--case", dest="cases", action="append", default=[], help="run only this case (repeatable)")
    sp.add_argument("--dry-run", action="store_true", help="build every case on the meta device and check it")
    sp.add_argument("--no-memory", dest="memory", action="store_false", default=None,
                    help="skip the peak-memory subprocesses")

    d = sub.add_parser("data", help="build datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    cd = dsub.add_parser("code2doc", help="build CodeXGLUE-format code->doc JSONL from Python sources")
    cd.add_argument("sources", nargs="+", type=Path)
    cd.add_argument("--out", type=Path, required=True)
    cd.add_argument("--include-tests", action="store_true", help="also mine test directories")
    return p


def main(argv: list[str] | None = None) -> int:
    from peftlab.errors import PeftlabError

    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come before or after options
        bad = [a for a in extra if "=" not in a or a.startswith("-") or not hasattr(args, "overrides")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if getattr(args, "quiet", False):  # no progress bars at all, transformers' weight loading's included
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return _COMMANDS[args.command](args)
    except PeftlabError as e:
        print(f"peftlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peftlab: interrupted", file=sys.stderr)
        return 130


def _train(args) -> int:
    from peftlab.config import load_config
    from peftlab.run import train_run
    from peftlab.schema import RunConfig

    if args.resume:
        from peftlab.errors import ConfigError
        from peftlab.run import resume_run

        if args.config or args.overrides or args.out:
            raise ConfigError("--resume RUN_DIR takes no config, overrides or --out: the run's own config is used")
        _print_metrics(resume_run(args.resume, progress=not args.quiet), args.resume)
        return 0
    if args.config is None:
        from peftlab.errors import ConfigError

        raise ConfigError("train: give a CONFIG.yaml (or --resume RUN_DIR)")
    cfg = load_config(RunConfig, args.config, args.overrides)
    out = args.out or Path("runs") / args.config.stem
    metrics = train_run(cfg, out, progress=not args.quiet)
    _print_metrics(metrics, out)
    return 0


def _print_metrics(m: dict, out: Path) -> None:
    if not m:  # a non-main data-parallel process: the main one reports
        return
    print(
        f"{m['method']}: trainable {m['trainable_params']:,} / {m['total_params']:,} ({m['trainable_pct']:.2f}%)  "
        f"BLEU {m['bleu']:.2f}  CodeXGLUE-BLEU {m['codexglue_bleu']:.2f}  ROUGE-L {m['rouge_l']:.2f}  "
        f"steps {m['steps']}  {m['train_seconds']:.1f}s  -> {out}"
    )


def _eval(args) -> int:
    from peftlab.run import evaluate_run

    print(json.dumps(evaluate_run(args.run_dir, args.split, args.max_examples), indent=2))
    return 0


def _generate(args) -> int:
    from peftlab.errors import DataError
    from peftlab.run import generate_one

    try:
        code = args.code.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{args.code}: cannot read: {e.strerror}") from None
    print(generate_one(args.run_dir, code, args.func_name))
    return 0


def _merge(args) -> int:
    from peftlab.run import merge_run

    print(merge_run(args.run_dir, args.out))
    return 0


def _export(args) -> int:
    from peftlab.run import export_run

    print(export_run(args.run_dir, args.out))
    return 0


def _compare(args) -> int:
    from peftlab.bench import compare

    compare(args.configs, args.out, overrides=args.overrides, progress=not args.quiet)
    return 0


def _pretrain(args) -> int:
    from peftlab.pretrain.recipe import dump_stats, load_pretrain_config, pretrain

    cfg = load_pretrain_config(args.config, args.overrides)
    stats = pretrain(cfg, args.out, work=args.work, resume=args.resume, progress=not args.quiet, halt_at=args.halt_at)
    print(dump_stats(stats))
    return 0


def _speed(args) -> int:
    from peftlab.speed import run_speed

    run_speed(args.spec, out=args.out, overrides=args.overrides, cases=args.cases, dry_run=args.dry_run,
              memory=args.memory)
    return 0


def _data(args) -> int:
    from peftlab.data.code2doc import build_code2doc

    manifest = build_code2doc(args.sources, args.out, exclude_tests=not args.include_tests)
    print(json.dumps({"out": str(args.out), **manifest["counts"]}))
    return 0


_COMMANDS = {"train": _train, "eval": _eval, "generate": _generate, "compare": _compare, "pretrain": _pretrain,
             "merge": _merge, "export": _export, "speed": _speed,
             "data": _data}

if __name__ == "__main__":
    sys.exit(main())
