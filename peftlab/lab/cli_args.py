"""The ``peftlab`` command's arguments: every subcommand and option (``peftlab.lab.cli`` runs them)."""

from __future__ import annotations

import argparse
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    from peftlab import __version__

    p = argparse.ArgumentParser(prog="peftlab", description="Parameter-efficient fine-tuning bench.")
    p.add_argument("--version", action="version", version=f"peftlab {__version__}",
                   help="print peftlab's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do (peftlab COMMAND -h)")

    t = sub.add_parser("train", help="train one config into a run directory")
    t.add_argument("config", type=Path, nargs="?", help="the run config (omit with --resume)")
    t.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run from its checkpoint")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=50 methods.0.r=16")
    t.add_argument("--out", type=Path, help="run directory (default runs/<config name>)")
    t.add_argument("--overwrite", action="store_true",
                   help="--out holds a failed or interrupted run: rename it aside (RUN.<state>-<time>, never "
                        "deleted) and train afresh; a complete run is never replaced")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="re-score a finished run from its saved adapter",
                       description="Re-score a finished run from its saved adapter on a fresh base model. "
                                   + _RUNS_DECODING)
    e.add_argument("run_dir", type=Path, help="a finished run directory")
    e.add_argument("--split", default=None, metavar="SPLIT",
                   help="the split to score: train, valid or test (default: the run's data.test_split)")
    e.add_argument("--max-examples", type=int, default=None, metavar="N",
                   help="score at most N rows of the split, a fixed-seed sample (default: the run's eval.max_examples)")
    e.add_argument("--perplexity", metavar="PATH", default=None,
                   help="causal runs: perplexity on a file, a directory of .py/.txt, or stdlib (held-out files) "
                        "instead of re-scoring a split")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="score on other test rows: data.* edits of the run's config (repeatable), e.g. "
                        "data.task.test_source=accelerate; with --name, written to RUN/evals/NAME.json")
    e.add_argument("--name", default=None, help="the name of a --set evaluation (RUN/evals/NAME.json)")
    e.add_argument("--window", type=int, default=None, help="perplexity: tokens per window")
    e.add_argument("--stride", type=int, default=None, help="perplexity: tokens between window starts")
    decoding_options(e)

    g = sub.add_parser("generate",
                       help="document a function (--code) or continue a prompt (--prompt) with a finished run",
                       description="Document a function, continue a prompt or answer an instruction with a finished "
                                   "run. " + _RUNS_DECODING)
    g.add_argument("run_dir", type=Path, help="a finished run directory")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--code", type=Path,
                     help="a Python file: its one function, or each of its functions, is documented (code->doc runs)")
    src.add_argument("--prompt", help="input text, given to the model as is")
    src.add_argument("--instruction", help="an instruction, put into an instruction run's prompt template")
    g.add_argument("--input", default="", help="with --instruction: its input / context")
    g.add_argument("--func-name", default=None, help="document only this function of the file")
    decoding_options(g)
    g.add_argument("--sample", action="store_true",
                   help="sample instead of greedy/beam search (one beam unless --num-beams says otherwise)")
    g.add_argument("--temperature", type=float, default=None, help="with --sample: the sampling temperature")
    g.add_argument("--top-p", type=float, default=None,
                   help="with --sample: keep the smallest set of tokens with this much probability (nucleus)")
    g.add_argument("--seed", type=int, default=None, help="sampling seed")

    mg = sub.add_parser("merge", help="write a finished run as a plain HF model (LoRA or IA3 merged in)")
    mg.add_argument("run_dir", type=Path, help="a finished run directory")
    mg.add_argument("--out", type=Path, required=True,
                    help="a new (or empty) directory for the merged model and its tokenizer (from_pretrained reads it)")

    ex = sub.add_parser("export", help="write a finished run's adapter in HF peft's format (LoRA, IA3, prompt tuning, P-tuning, prefix and LLaMA-Adapter with gate: layer, on decoders)")
    ex.add_argument("run_dir", type=Path, help="a finished run directory")
    ex.add_argument("--out", type=Path, required=True,
                    help="a new (or empty) directory for adapter_config.json, adapter_model.safetensors and a "
                         "model card (README.md) that PeftModel.from_pretrained reads")

    ip = sub.add_parser("import-peft", help="turn an HF peft adapter (LoRA, IA3, prompt tuning) into a peftlab "
                                            "run directory, scored on a task, that eval and a bench can score again")
    ip.add_argument("adapter_dir", type=Path, help="a peft adapter: adapter_config.json and adapter_model.safetensors")
    ip.add_argument("--out", type=Path, required=True, help="the run directory to write (must not exist)")
    ip.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="run-config fields (repeatable): the task to score on, e.g. data.task=code2doc "
                         "eval.max_examples=50; model.name=DIR when the adapter's base is elsewhere on this machine")
    ip.add_argument("--quiet", action="store_true", help="no progress bars")

    ls_ = sub.add_parser("list", help="list the methods, tasks or models peftlab knows, one line each")
    ls_.add_argument("what", choices=("methods", "tasks", "models"), help="methods, tasks or models")

    c = sub.add_parser("compare", help="run several configs and print one comparison table")
    c.add_argument("configs", nargs="+", type=Path, help="config files or directories of them")
    c.add_argument("--out", type=Path, required=True, help="directory for the runs and the table")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="key=value for every run (repeatable)")
    c.add_argument("--quiet", action="store_true", help="no progress bars")

    b = sub.add_parser("bench", help="run methods × tasks × seeds from a bench spec into one directory, then report")
    b.add_argument("spec", type=Path, help="the bench spec (configs/bench/*.yaml)")
    b.add_argument("--out", type=Path, required=True, help="the bench directory (a rerun keeps finished runs)")
    b.add_argument("--set", dest="overrides", action="append", default=[],
                   help="key=value on the spec, e.g. seeds=[0] budget.steps=20 (repeatable)")
    b.add_argument("--no-report", action="store_true", help="leave the report to `peftlab report`")
    b.add_argument("--launcher", choices=("local", "ray", "slurm"), default=None,
                   help="where each run's process runs (the spec's launcher: this machine, a Ray task, a SLURM job)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")

    rp = sub.add_parser("report", help="write report.md and a self-contained report.html for a bench directory")
    rp.add_argument("bench_dir", type=Path, help="a bench directory (peftlab bench --out)")
    rp.add_argument("--publish", type=Path, default=None, metavar="DEST",
                    help="copy the bench's record (index; per run config, status, metrics, loss log; no weights "
                         "or predictions) into DEST and write the report there: a copy to commit")

    an = sub.add_parser("analyze", help="analyses of trained runs (LoRA subspaces, per-layer importance)")
    asub = an.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS", help="which analysis")
    ls = asub.add_parser("lora-subspace",
                         help="Grassmann similarity of two runs' LoRA A matrices, per layer (LoRA §7.2)")
    ls.add_argument("run_a", type=Path, help="a finished LoRA run")
    ls.add_argument("run_b", type=Path, help="another finished LoRA run on the same base and layers")
    ls.add_argument("--out", type=Path, required=True, help="directory for subspace.{json,md,png}")
    li = asub.add_parser("layer-importance", help="score drop when each layer's adapters are taken out (AdapterDrop)")
    li.add_argument("run_dir", type=Path, help="a finished run")
    li.add_argument("--out", type=Path, required=True, help="directory for layer_importance.{json,md,png}")
    li.add_argument("--mode", choices=("reset", "zero"), default="reset",
                    help="reset: to the values training started from (removal for identity-at-init methods); zero")
    li.add_argument("--max-examples", type=int, default=None, help="rows scored (default: the run's eval.max_examples)")
    li.add_argument("--split", default=None, help="split scored (default: the run's test split)")

    se = sub.add_parser("search",
                        help="AutoPEFT-style search (Optuna) of which methods go where under a parameter budget")
    se.add_argument("spec", type=Path, help="the search spec (configs/search/*.yaml)")
    se.add_argument("--out", type=Path, required=True, help="directory for the trials and study.db (a rerun resumes)")
    se.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="key=value on the spec (repeatable)")
    se.add_argument("--quiet", action="store_true", help="no progress bars")
    se.add_argument("--launcher", choices=("local", "ray", "slurm"), default=None,
                    help="where each trial's process runs (the spec's launcher: this machine, a Ray task, a SLURM job)")

    pt = sub.add_parser("pretrain", help="pretrain one of peftlab's small models from a recipe")
    pt.add_argument("config", type=Path, help="a pretraining recipe (configs/pretrain/*.yaml)")
    pt.add_argument("overrides", nargs="*", help="key=value overrides")
    pt.add_argument("--out", type=Path, required=True, help="the model directory to write")
    pt.add_argument("--work", type=Path, default=None, help="checkpoint directory (default OUT/checkpoints)")
    pt.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    pt.add_argument("--halt-at", type=int, default=None, help="stop after this step's checkpoint (resume later)")
    pt.add_argument("--quiet", action="store_true", help="no progress bars")

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
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="DATASET", help="which dataset to build")
    cd = dsub.add_parser("code2doc", help="build CodeXGLUE-format code->doc JSONL from Python sources")
    cd.add_argument("sources", nargs="+", type=Path, help=_SOURCES)
    cd.add_argument("--out", type=Path, required=True, help=_SPLITS_OUT)
    cd.add_argument("--include-tests", action="store_true", help="also mine test directories")
    cd.add_argument("--percent", default=None, help=_PERCENT)
    from peftlab.tasks.source import source_task_classes

    for task in source_task_classes():
        sp = dsub.add_parser(task.name, help=f"build the {task.name} task's splits from Python sources")
        sp.add_argument("sources", nargs="+", type=Path, help=_SOURCES)
        sp.add_argument("--out", type=Path, required=True, help=_SPLITS_OUT)
        sp.add_argument("--include-tests", action="store_true", help="also mine test directories")
        sp.add_argument("--percent", default=None, help=_PERCENT)

    co = dsub.add_parser("corpus", help="build a pretraining corpus: the stdlib plus pinned PyPI packages, "
                                         "licence-checked and deduplicated (configs/pretrain/corpus-v2.yaml)")
    co.add_argument("spec", type=Path, help="the corpus spec (packages and held-out packages, pinned)")
    co.add_argument("--out", type=Path, required=True, help="directory for files/ and manifest.json (replaced whole)")
    co.add_argument("--cache", type=Path, default=None,
                    help="where downloaded wheels are kept (default ~/.cache/peftlab/wheels)")
    co.add_argument("--pinned", type=Path, default=None,
                    help="a committed corpus manifest whose wheel SHA-256s the downloads must match")

    ins = dsub.add_parser("instruct", help="build a dolly-format instruction set (document / implement / name "
                                            "functions) from Python sources")
    ins.add_argument("sources", nargs="+", type=Path, help=_SOURCES)
    ins.add_argument("--out", type=Path, required=True, help=_SPLITS_OUT)
    ins.add_argument("--include-tests", action="store_true", help="also mine test directories")
    ins.add_argument("--percent", default=None, help=_PERCENT)
    return p


_SOURCES = "Python source trees or files to mine (test directories skipped unless --include-tests)"
_SPLITS_OUT = "the directory for train/valid/test.jsonl and manifest.json"
_PERCENT = ("TRAIN,VALID,TEST: the percent of source files in each split, assigned by content hash "
            "(default 90,5,5); a small tree may need larger valid and test shares")
_RUNS_DECODING = ("Each task decodes as the run chose on its validation split (eval.select; metrics.json's "
                  "\"decoding\"), or with its config's eval settings where it chose nothing; --num-beams, "
                  "--no-repeat-ngram-size and --max-new-tokens override that.")


def decoding_options(p: argparse.ArgumentParser) -> None:
    """The decoding flags of the commands that use a finished run (``eval``, ``generate``)."""
    p.add_argument("--num-beams", type=int, default=None, metavar="N",
                   help="beam search width, 1 = greedy (default: the run's choice on validation, else its "
                        "eval.num_beams)")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None, metavar="N",
                   help="never repeat an n-gram of this many tokens, 0 = off (default: the run's choice on "
                        "validation, else its eval.no_repeat_ngram_size)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="most tokens generated per output (default: the run's choice on validation, else its "
                        "eval.max_new_tokens)")
