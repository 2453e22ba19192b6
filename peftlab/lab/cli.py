"""The ``peftlab`` command: runs the subcommands ``peftlab.lab.cli_args`` parses, over ``peftlab.lab.run`` and friends.

Bad input (``PeftlabError``) prints one line naming the file/line/field and exits with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from peftlab.lab import cli_args


def main(argv: list[str] | None = None) -> int:
    from peftlab.errors import PeftlabError

    from peftlab.lab.env import configure_logging, set_invocation

    set_invocation(sys.argv[1:] if argv is None else argv)  # results files record the command
    parser = cli_args.parser()
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
        for one in getattr(e, "errors", [e]):  # a config's errors are reported together, one a line
            print(f"peftlab: error: {one}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM during a run (peftlab.lab.rundir.Interrupted)
        print(f"peftlab: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 128 + int(getattr(e, "signum", 2))
    except OSError as e:  # the machine, not the input: a full disk, a read-only directory
        where = f"{e.filename}: " if e.filename else ""
        print(f"peftlab: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


def _train(args) -> int:
    from peftlab.config import load_config
    from peftlab.lab.run import train_run
    from peftlab.schema import RunConfig

    if args.resume:
        from peftlab.errors import ConfigError
        from peftlab.lab.run import resume_run

        if args.config or args.overrides or args.out:
            raise ConfigError("--resume RUN_DIR takes no config, overrides or --out: the run's own config is used")
        _print_metrics(resume_run(args.resume, progress=not args.quiet), args.resume)
        return 0
    if args.config is None:
        from peftlab.errors import ConfigError

        raise ConfigError("train: give a CONFIG.yaml (or --resume RUN_DIR)")
    cfg = load_config(RunConfig, args.config, args.overrides)
    out = args.out or Path("runs") / args.config.stem
    from peftlab.errors import PeftlabError, RunDirError
    from peftlab.lab import rundir

    if args.overwrite:
        rundir.set_aside(out)
    try:
        metrics = train_run(cfg, out, progress=not args.quiet)
    except PeftlabError as e:
        if isinstance(e, RunDirError) or rundir.read_status(out).get("state") != "failed":
            raise  # not this run's failure (the directory was in the way), or it says what next itself
        raise PeftlabError(f"{e}; {out} is marked failed: once that is fixed, `peftlab train --resume {out}` "
                           f"continues it, or the same command with --overwrite starts it again") from e
    _print_metrics(metrics, out)
    return 0


def _print_metrics(m: dict, out: Path) -> None:
    if not m:  # a non-main data-parallel process: the main one reports
        return
    from peftlab.lab.compare import METRICS

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
    from peftlab.lab.finished import evaluate_run

    if args.max_examples is not None and args.max_examples < 1:
        from peftlab.errors import ConfigError

        raise ConfigError(f"--max-examples: must be >= 1, got {args.max_examples} (omit it for the run's own)")
    decoding = _decoding(args)
    if args.overrides or args.name:
        from peftlab.config import parse_override
        from peftlab.errors import ConfigError
        from peftlab.lab.evals import evaluate_on

        if not (args.overrides and args.name):
            raise ConfigError("eval: --set and --name go together (the edits, and the name to keep the scores under)")
        if args.split or args.max_examples is not None or args.perplexity:
            raise ConfigError("eval: --set/--name replace --split, --max-examples and --perplexity (set "
                              "data.test_split=... or eval.max_examples=... instead)")
        edits = {}
        for text in args.overrides:
            path, value = parse_override(text)
            edits[".".join(map(str, path))] = value
        record = evaluate_on(args.run_dir, args.name, edits, decoding)
        print(json.dumps({k: record[k] for k in ("name", "test_examples", "task_metrics", "beats_floors")
                          if k in record}, indent=2))
        return 0
    if args.perplexity or args.window is not None or args.stride is not None:
        from peftlab.lab.finished import perplexity_run

        if decoding:
            from peftlab.errors import ConfigError

            raise ConfigError("eval: perplexity decodes nothing; drop --num-beams / --no-repeat-ngram-size / "
                              "--max-new-tokens")

        print(json.dumps(perplexity_run(args.run_dir, args.perplexity, args.window, args.stride), indent=2))
        return 0
    print(json.dumps(evaluate_run(args.run_dir, args.split, args.max_examples, decoding), indent=2))
    return 0


def _generate(args) -> int:
    from peftlab.errors import DataError
    from peftlab.lab.finished import generate_docs, generate_one

    decoding = _decoding(args)
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


_DECODING_FLAGS = ("max_new_tokens", "num_beams", "no_repeat_ngram_size", "temperature", "top_p", "seed")


def _decoding(args) -> dict:
    """The decoding flags given (``eval``, ``generate``), checked: settings over the run's own choice."""
    decoding = {k: getattr(args, k) for k in _DECODING_FLAGS if getattr(args, k, None) is not None}
    if getattr(args, "sample", False):
        decoding["do_sample"] = True
        decoding.setdefault("num_beams", 1)  # sampling replaces the run's beam search unless asked for both
    _check_decoding(decoding, args.command)
    return decoding


def _check_decoding(d: dict, command: str) -> None:
    from peftlab.errors import ConfigError

    for key, ok, what in (("max_new_tokens", lambda v: v >= 1, ">= 1"), ("num_beams", lambda v: v >= 1, ">= 1"),
                          ("no_repeat_ngram_size", lambda v: v >= 0, ">= 0"),
                          ("temperature", lambda v: v > 0, "> 0"), ("top_p", lambda v: 0 < v <= 1, "in (0, 1]")):
        if key in d and not ok(d[key]):
            raise ConfigError(f"{command} --{key.replace('_', '-')}: must be {what}, got {d[key]}")


def _merge(args) -> int:
    from peftlab.lab.finished import merge_run

    print(merge_run(args.run_dir, args.out))
    return 0


def _export(args) -> int:
    from peftlab.lab.finished import export_run

    print(export_run(args.run_dir, args.out))
    return 0


def _import_peft(args) -> int:
    from peftlab.lab.imported import import_peft

    metrics = import_peft(args.adapter_dir, args.out, overrides=args.overrides, progress=not args.quiet)
    _print_metrics(metrics, args.out)
    return 0


def _list(args) -> int:
    from peftlab.lab.listing import lines

    print("\n".join(lines(args.what)))
    return 0


def _compare(args) -> int:
    from peftlab.lab.compare import compare

    compare(args.configs, args.out, overrides=args.overrides, progress=not args.quiet)
    return 0


def _bench(args) -> int:
    from peftlab.lab.bench.run import run_bench

    launcher = (f"launcher={args.launcher}",) if args.launcher else ()  # the same as --set launcher=...
    index = run_bench(args.spec, args.out, overrides=(*args.overrides, *launcher), progress=not args.quiet,
                      report=not args.no_report)
    done = sum(r["state"] == "complete" for r in index["runs"])
    print(f"{done} runs complete in {args.out}" + ("" if args.no_report else f"; report: {args.out / 'report.md'}, "
                                                                         f"{args.out / 'report.html'}"))
    return 0


def _report(args) -> int:
    from peftlab.lab.report import write_report
    from peftlab.lab.report.publish import publish

    paths = publish(args.bench_dir, args.publish) if args.publish else write_report(args.bench_dir)
    print(f"{paths['report.md']}\n{paths['report.html']}")
    return 0


def _analyze(args) -> int:
    if args.analysis == "lora-subspace":
        from peftlab.lab.analysis.subspace import write_subspace

        paths = write_subspace(args.run_a, args.run_b, args.out)
        print(paths["md"].read_text())
    else:
        from peftlab.lab.analysis.layers import layer_importance, write_layer_importance

        if args.max_examples is not None and args.max_examples < 1:
            from peftlab.errors import ConfigError

            raise ConfigError(f"--max-examples: must be >= 1, got {args.max_examples}")
        result = layer_importance(args.run_dir, mode=args.mode, max_examples=args.max_examples, split=args.split)
        paths = write_layer_importance(result, args.out)
        print(paths["md"].read_text())
    return 0


def _search(args) -> int:
    from peftlab.lab.search.run import run_search

    launcher = (f"launcher={args.launcher}",) if args.launcher else ()  # the same as --set launcher=...
    summary = run_search(args.spec, args.out, overrides=(*args.overrides, *launcher), progress=not args.quiet)
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
    from peftlab.lab.speed import run_speed

    run_speed(args.spec, out=args.out, overrides=args.overrides, cases=args.cases, dry_run=args.dry_run,
              memory=args.memory)
    return 0


def _env(args) -> int:
    from peftlab.lab.env import format_report, report

    rep = report()
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


def _data(args) -> int:
    if args.data_command == "corpus":
        from peftlab.pretrain.packages import build_dir

        manifest = build_dir(args.spec, args.out, cache=args.cache, pinned=args.pinned)
        print(json.dumps({"out": str(args.out), "files": len(manifest["files"]), "bytes": manifest["bytes"],
                          "fingerprint": manifest["fingerprint"]}))
        return 0
    from peftlab.data.splits import parse_percent

    kw = {"exclude_tests": not args.include_tests, "percent": parse_percent(args.percent) if args.percent else None}
    if args.data_command == "instruct":
        from peftlab.data.instruct import build_instruct

        manifest = build_instruct(args.sources, args.out, **kw)
    elif args.data_command == "code2doc":
        from peftlab.data.code2doc import build_code2doc

        manifest = build_code2doc(args.sources, args.out, **kw)
    else:
        from peftlab.data.pysource import build_task_dir
        from peftlab.tasks import get_task

        manifest = build_task_dir(args.sources, get_task(args.data_command), args.out, **kw)
    print(json.dumps({"out": str(args.out), **manifest["counts"]}))
    return 0


_COMMANDS = {"train": _train, "eval": _eval, "generate": _generate, "compare": _compare, "pretrain": _pretrain,
             "merge": _merge, "export": _export, "bench": _bench, "report": _report, "analyze": _analyze,
             "search": _search, "speed": _speed,
             "data": _data, "env": _env, "import-peft": _import_peft, "list": _list}

if __name__ == "__main__":
    sys.exit(main())
