"""The ``peftlab`` command: thin argument parsing over ``peftlab.run`` and friends.

Bad input (``PeftlabError``) prints one line naming the file/line/field and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
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
    e.add_argument("--perplexity", metavar="PATH", default=None,
                   help="causal runs: perplexity on a file, a directory of .py/.txt, or stdlib (held-out files) "
                        "instead of re-scoring a split")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="score on other test rows: data.* edits of the run's config (repeatable), e.g. "
                        "data.task.test_source=accelerate; with --name, written to RUN/evals/NAME.json")
    e.add_argument("--name", default=None, help="the name of a --set evaluation (RUN/evals/NAME.json)")
    e.add_argument("--window", type=int, default=None, help="perplexity: tokens per window")
    e.add_argument("--stride", type=int, default=None, help="perplexity: tokens between window starts")

    g = sub.add_parser("generate", help="document a function (--code) or continue a prompt (--prompt) with a finished run")
    g.add_argument("run_dir", type=Path)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--code", type=Path,
                     help="a Python file: its one function, or each of its functions, is documented (code->doc runs)")
    src.add_argument("--prompt", help="input text, given to the model as is")
    src.add_argument("--instruction", help="an instruction, put into an instruction run's prompt template")
    g.add_argument("--input", default="", help="with --instruction: its input / context")
    g.add_argument("--func-name", default=None, help="document only this function of the file")
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--num-beams", type=int, default=None, help="beam search width (1 = greedy)")
    g.add_argument("--sample", action="store_true", help="sample instead of greedy/beam search")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None, help="sampling seed")

    mg = sub.add_parser("merge", help="write a finished run as a plain HF model (LoRA or IA3 merged in)")
    mg.add_argument("run_dir", type=Path)
    mg.add_argument("--out", type=Path, required=True)

    ex = sub.add_parser("export", help="write a finished run's adapter in HF peft's format (LoRA, IA3, prompt tuning, P-tuning, prefix and LLaMA-Adapter on decoders)")
    ex.add_argument("run_dir", type=Path)
    ex.add_argument("--out", type=Path, required=True)

    c = sub.add_parser("compare", help="run several configs and print one comparison table")
    c.add_argument("configs", nargs="+", type=Path, help="config files or directories of them")
    c.add_argument("--out", type=Path, required=True, help="directory for the runs and the table")
    c.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every run")
    c.add_argument("--quiet", action="store_true")

    b = sub.add_parser("bench", help="run methods × tasks × seeds from a bench spec into one directory, then report")
    b.add_argument("spec", type=Path, help="the bench spec (configs/bench/*.yaml)")
    b.add_argument("--out", type=Path, required=True, help="the bench directory (a rerun keeps finished runs)")
    b.add_argument("--set", dest="overrides", action="append", default=[],
                   help="key=value on the spec, e.g. seeds=[0] budget.steps=20 (repeatable)")
    b.add_argument("--no-report", action="store_true", help="leave the report to `peftlab report`")
    b.add_argument("--quiet", action="store_true")

    rp = sub.add_parser("report", help="write report.md and a self-contained report.html for a bench directory")
    rp.add_argument("bench_dir", type=Path)
    rp.add_argument("--publish", type=Path, default=None, metavar="DEST",
                    help="copy the bench's record (index; per run config, status, metrics, loss log; no weights "
                         "or predictions) into DEST and write the report there: a copy to commit")

    an = sub.add_parser("analyze", help="analyses of trained runs (LoRA subspaces, per-layer importance)")
    asub = an.add_subparsers(dest="analysis", required=True)
    ls = asub.add_parser("lora-subspace",
                         help="Grassmann similarity of two runs' LoRA A matrices, per layer (LoRA §7.2)")
    ls.add_argument("run_a", type=Path)
    ls.add_argument("run_b", type=Path)
    ls.add_argument("--out", type=Path, required=True, help="directory for subspace.{json,md,png}")
    li = asub.add_parser("layer-importance", help="score drop when each layer's adapters are taken out (AdapterDrop)")
    li.add_argument("run_dir", type=Path)
    li.add_argument("--out", type=Path, required=True, help="directory for layer_importance.{json,md,png}")
    li.add_argument("--mode", choices=("reset", "zero"), default="reset",
                    help="reset: to the values training started from (removal for identity-at-init methods); zero")
    li.add_argument("--max-examples", type=int, default=None, help="rows scored (default: the run's eval.max_examples)")
    li.add_argument("--split", default=None, help="split scored (default: the run's test split)")

    se = sub.add_parser("search",
                        help="AutoPEFT-style search (Optuna) of which methods go where under a parameter budget")
    se.add_argument("spec", type=Path, help="the search spec (configs/search/*.yaml)")
    se.add_argument("--out", type=Path, required=True, help="directory for the trials and study.db (a rerun resumes)")
    se.add_argument("--set", dest="overrides", action="append", default=[], help="key=value on the spec (repeatable)")
    se.add_argument("--quiet", action="store_true")

    pt = sub.add_parser("pretrain", help="pretrain one of peftlab's small models from a recipe")
    pt.add_argument("config", type=Path)
    pt.add_argument("overrides", nargs="*", help="key=value overrides")
    pt.add_argument("--out", type=Path, required=True, help="the model directory to write")
    pt.add_argument("--work", type=Path, default=None, help="checkpoint directory (default OUT/checkpoints)")
    pt.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    pt.add_argument("--halt-at", type=int, default=None, help="stop after this step's checkpoint (resume later)")
    pt.add_argument("--quiet", action="store_true")

    en = sub.add_parser("env", help="versions, device, CPU capability, native bf16: what a bug report needs")
    en.add_argument("--json", action="store_true", help="one JSON object instead of aligned lines")
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
    from peftlab.tasks.source import source_task_classes

    for task in source_task_classes():
        sp = dsub.add_parser(task.name, help=f"build the {task.name} task's splits from Python sources")
        sp.add_argument("sources", nargs="+", type=Path)
        sp.add_argument("--out", type=Path, required=True)
        sp.add_argument("--include-tests", action="store_true", help="also mine test directories")

    ins = dsub.add_parser("instruct", help="build a dolly-format instruction set (document / implement / name "
                                            "functions) from Python sources")
    ins.add_argument("sources", nargs="+", type=Path)
    ins.add_argument("--out", type=Path, required=True)
    ins.add_argument("--include-tests", action="store_true", help="also mine test directories")
    return p


def main(argv: list[str] | None = None) -> int:
    from peftlab.errors import PeftlabError

    from peftlab.env import configure_logging, set_invocation

    set_invocation(sys.argv[1:] if argv is None else argv)  # results files record the command
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come before or after options
        bad = [a for a in extra if "=" not in a or a.startswith("-") or not hasattr(args, "overrides")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = list(args.overrides) + extra
    configure_logging()
    if getattr(args, "quiet", False):  # no progress bars at all, transformers' weight loading's included
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return _COMMANDS[args.command](args)
    except PeftlabError as e:
        print(f"peftlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM during a run (peftlab.rundir.Interrupted)
        print(f"peftlab: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 128 + int(getattr(e, "signum", 2))
    except OSError as e:  # the machine, not the input: a full disk, a read-only directory
        where = f"{e.filename}: " if e.filename else ""
        print(f"peftlab: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


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
    from peftlab.bench import METRICS

    scores = "  ".join(f"{title} {m[key]:.2f}" for key, title, _ in METRICS if isinstance(m.get(key), float)
                       and key != "distinct_predictions")
    print(
        f"{m['method']}: trainable {m['trainable_params']:,} / {m['total_params']:,} ({m['trainable_pct']:.2f}%)  "
        f"{scores}  steps {m['steps']}  {m['train_seconds']:.1f}s  -> {out}"
    )
    for task, floors in (m.get("floors") or {}).items():
        key = floors["metric"]
        shown = ", ".join(f"{name} {f[key]:.2f}" for name, f in floors.items() if isinstance(f, dict))
        verdict = "beats them" if m["beats_floors"][task] else "does NOT beat them"
        print(f"  floors of {task} on {key}: {shown}; the method scores {m['task_metrics'][task][key]:.2f}: {verdict}")


def _eval(args) -> int:
    from peftlab.finished import evaluate_run

    if args.max_examples is not None and args.max_examples < 1:
        from peftlab.errors import ConfigError

        raise ConfigError(f"--max-examples: must be >= 1, got {args.max_examples} (omit it for the run's own)")
    if args.overrides or args.name:
        from peftlab.config import parse_override
        from peftlab.errors import ConfigError
        from peftlab.evals import evaluate_on

        if not (args.overrides and args.name):
            raise ConfigError("eval: --set and --name go together (the edits, and the name to keep the scores under)")
        if args.split or args.max_examples is not None or args.perplexity:
            raise ConfigError("eval: --set/--name replace --split, --max-examples and --perplexity (set "
                              "data.test_split=... or eval.max_examples=... instead)")
        edits = {}
        for text in args.overrides:
            path, value = parse_override(text)
            edits[".".join(map(str, path))] = value
        record = evaluate_on(args.run_dir, args.name, edits)
        print(json.dumps({k: record[k] for k in ("name", "test_examples", "task_metrics", "beats_floors")
                          if k in record}, indent=2))
        return 0
    if args.perplexity or args.window is not None or args.stride is not None:
        from peftlab.finished import perplexity_run

        print(json.dumps(perplexity_run(args.run_dir, args.perplexity, args.window, args.stride), indent=2))
        return 0
    print(json.dumps(evaluate_run(args.run_dir, args.split, args.max_examples), indent=2))
    return 0


def _generate(args) -> int:
    from peftlab.errors import DataError
    from peftlab.finished import generate_docs, generate_one

    decoding = {k: v for k, v in (("max_new_tokens", args.max_new_tokens), ("num_beams", args.num_beams),
                                  ("temperature", args.temperature), ("top_p", args.top_p), ("seed", args.seed))
                if v is not None}
    if args.sample:
        decoding["do_sample"] = True
    _check_decoding(decoding)
    if args.prompt is not None or args.instruction is not None:
        print(generate_one(args.run_dir, prompt=args.prompt, decoding=decoding, instruction=args.instruction,
                           input=args.input))
        return 0
    try:
        code = args.code.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{args.code}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"{args.code}: not a text file (not UTF-8); give a file with one Python function") from None
    docs = generate_docs(args.run_dir, code, args.func_name, where=str(args.code), decoding=decoding)
    for name, doc in docs:
        print(doc if len(docs) == 1 else f"{name}: {doc}")
    return 0


def _check_decoding(d: dict) -> None:
    from peftlab.errors import ConfigError

    for key, ok, what in (("max_new_tokens", lambda v: v >= 1, ">= 1"), ("num_beams", lambda v: v >= 1, ">= 1"),
                          ("temperature", lambda v: v > 0, "> 0"), ("top_p", lambda v: 0 < v <= 1, "in (0, 1]")):
        if key in d and not ok(d[key]):
            raise ConfigError(f"generate --{key.replace('_', '-')}: must be {what}, got {d[key]}")


def _merge(args) -> int:
    from peftlab.finished import merge_run

    print(merge_run(args.run_dir, args.out))
    return 0


def _export(args) -> int:
    from peftlab.finished import export_run

    print(export_run(args.run_dir, args.out))
    return 0


def _compare(args) -> int:
    from peftlab.bench import compare

    compare(args.configs, args.out, overrides=args.overrides, progress=not args.quiet)
    return 0


def _bench(args) -> int:
    from peftlab.study import run_bench

    index = run_bench(args.spec, args.out, overrides=tuple(args.overrides), progress=not args.quiet,
                      report=not args.no_report)
    done = sum(r["state"] == "complete" for r in index["runs"])
    print(f"{done} runs complete in {args.out}" + ("" if args.no_report else f"; report: {args.out / 'report.md'}, "
                                                                         f"{args.out / 'report.html'}"))
    return 0


def _report(args) -> int:
    from peftlab.report import write_report
    from peftlab.report.publish import publish

    paths = publish(args.bench_dir, args.publish) if args.publish else write_report(args.bench_dir)
    print(f"{paths['report.md']}\n{paths['report.html']}")
    return 0


def _analyze(args) -> int:
    if args.analysis == "lora-subspace":
        from peftlab.analysis.subspace import write_subspace

        paths = write_subspace(args.run_a, args.run_b, args.out)
        print(paths["md"].read_text())
    else:
        from peftlab.analysis.layers import layer_importance, write_layer_importance

        if args.max_examples is not None and args.max_examples < 1:
            from peftlab.errors import ConfigError

            raise ConfigError(f"--max-examples: must be >= 1, got {args.max_examples}")
        result = layer_importance(args.run_dir, mode=args.mode, max_examples=args.max_examples, split=args.split)
        paths = write_layer_importance(result, args.out)
        print(paths["md"].read_text())
    return 0


def _search(args) -> int:
    from peftlab.search import run_search

    summary = run_search(args.spec, args.out, overrides=tuple(args.overrides), progress=not args.quiet)
    print((args.out / "pareto.md").read_text())
    print(f"{summary['finished']} trials finished; every trial: {args.out / 'trials.md'}")
    return 0


def _pretrain(args) -> int:
    from peftlab.pretrain.recipe import dump_stats, load_pretrain_config, pretrain

    if args.halt_at is not None and args.halt_at < 1:
        from peftlab.errors import ConfigError

        raise ConfigError(f"--halt-at: must be >= 1, got {args.halt_at}")
    cfg = load_pretrain_config(args.config, args.overrides)
    stats = pretrain(cfg, args.out, work=args.work, resume=args.resume, progress=not args.quiet, halt_at=args.halt_at)
    print(dump_stats(stats))
    return 0


def _speed(args) -> int:
    from peftlab.speed import run_speed

    run_speed(args.spec, out=args.out, overrides=args.overrides, cases=args.cases, dry_run=args.dry_run,
              memory=args.memory)
    return 0


def _env(args) -> int:
    from peftlab.env import format_report, report

    rep = report()
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


def _data(args) -> int:
    if args.data_command == "instruct":
        from peftlab.data.instruct import build_instruct

        manifest = build_instruct(args.sources, args.out, exclude_tests=not args.include_tests)
    elif args.data_command == "code2doc":
        from peftlab.data.code2doc import build_code2doc

        manifest = build_code2doc(args.sources, args.out, exclude_tests=not args.include_tests)
    else:
        from peftlab.data.pysource import build_task_dir
        from peftlab.tasks import get_task

        manifest = build_task_dir(args.sources, get_task(args.data_command), args.out, exclude_tests=not args.include_tests)
    print(json.dumps({"out": str(args.out), **manifest["counts"]}))
    return 0


_COMMANDS = {"train": _train, "eval": _eval, "generate": _generate, "compare": _compare, "pretrain": _pretrain,
             "merge": _merge, "export": _export, "bench": _bench, "report": _report, "analyze": _analyze,
             "search": _search, "speed": _speed,
             "data": _data, "env": _env}

if __name__ == "__main__":
    sys.exit(main())
