"""The speed benchmark: peftlab beside HF peft, same model, weights, batch, precision, optimizer.

``peftlab speed benchmarks/speed/cpu-t5-small.yaml`` (or ``python benchmarks/speed.py ...``) runs
every case of a spec (``peftlab.lab.speed.spec``) in one process, interleaving the implementations'
steps (train cases), forward passes and generation (inference cases) or decoding passes (generate
cases) through one timing loop (``timing``), then measures each implementation's peak memory in a
fresh subprocess, and writes ``benchmarks/results/speed/<spec>.json`` and ``.md``: per case and
precision the median time with its spread, tokens/s, peak memory, trainable parameters, and the
ratios peftlab / reference and, for ``compare`` rows, theirs over peftlab's.
``--dry-run`` builds every case on the ``meta`` device (no memory, no device needed) and checks
that peftlab and peft train the same number of parameters: how a GPU spec is tested on a CPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

DEFAULT_OUT = Path("benchmarks/results/speed")


def run_speed(
    spec_path: Path,
    *,
    out: Optional[Path] = None,
    overrides: Sequence[str] = (),
    cases: Sequence[str] = (),
    dry_run: bool = False,
    memory: Optional[bool] = None,
    log: Optional[Callable[[str], None]] = None,
) -> dict:
    """Run (or with ``dry_run`` check) a spec; returns the results dict written to ``out``."""
    import torch

    from peftlab.errors import ConfigError
    from peftlab.lab.speed import build, machine, report
    from peftlab.lab.speed.spec import load_spec

    log = log or (lambda line: print(line, flush=True))
    spec = load_spec(spec_path, overrides)
    chosen = [c for c in spec.cases if not cases or c.name in cases]
    unknown = set(cases) - {c.name for c in spec.cases}
    if unknown:
        raise ConfigError(f"--case: {', '.join(sorted(unknown))} not in {spec_path} "
                          f"(cases: {', '.join(c.name for c in spec.cases)})")
    if spec.threads:
        torch.set_num_threads(spec.threads)
    from peftlab.lab.env import command_line

    command = command_line("peftlab.lab.speed.run_speed")
    if dry_run:
        rows = [r for c in chosen for r in dry_run_case(spec, c)]
        result = {"spec": str(spec_path), "dry_run": True, "command": command, "rows": rows}
        log(report.dry_table(rows))
        return result
    device = build.resolve_device(spec.device)
    result = {"spec": str(spec_path), "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine.describe(device), "warmup": spec.warmup, "reps": spec.reps, "rows": []}
    log(f"# {spec_path} on {machine.short(result['machine'])}")
    for case in chosen:
        for precision in spec.precisions:
            result["rows"] += _run_case(spec, spec_path, overrides, case, precision, device,
                                        spec.memory if memory is None else memory, log)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report.add_ratios(result["rows"])
    table = report.table(result)
    log(table)
    out = Path(out) if out else DEFAULT_OUT / f"{Path(spec_path).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    log(f"wrote {out} and {out.with_suffix('.md')}")
    return result


def _run_case(spec, spec_path, overrides, case, precision, device, memory: bool, log) -> list[dict]:
    import torch

    from peftlab.lab.speed.memory import in_subprocess
    from peftlab.lab.speed.report import times_key

    log(f"{case.name} [{precision}] {case.note}".rstrip())
    if case.kind == "generate":
        from peftlab.lab.speed.generate import time_generate

        return time_generate(spec, case, precision, device, log)
    if case.kind == "inference":
        from peftlab.lab.speed.inference import time_inference

        rows = time_inference(spec, case, precision, device, log)
    else:
        from peftlab.lab.speed.train_case import time_case

        rows = time_case(spec, case, precision, device, log)
    for row in rows:
        if "tokens_per_s" in row:
            key = times_key(row)
            log(f"  {row['impl']}{' ' + row['phase'] if 'phase' in row else ''}: {row[key + '_median'] * 1e3:,.0f} "
                f"ms (min {row[key + '_min'] * 1e3:,.0f}), {row['tokens_per_s']:,.0f} tokens/s")
    if memory:
        measured = {}  # an inference case's phases share one worker per implementation
        for row in rows:
            if row.get("error"):
                continue
            if row["impl"] not in measured:
                job = {"spec": str(spec_path), "overrides": list(overrides), "case": case.name, "precision": precision,
                       "impl": row["impl"], "threads": torch.get_num_threads()}
                measured[row["impl"]] = in_subprocess(job)
                log(f"  {row['impl']}: peak memory {_fmt(measured[row['impl']])}")
            row.update({f"memory_{k}": v for k, v in measured[row["impl"]].items()})
    return rows


def _fmt(mem: dict) -> str:
    return mem["error"] if "error" in mem else f"{mem['peak_bytes'] / 2**30:.2f} GiB ({mem['kind']})"


def dry_run_case(spec, case) -> list[dict]:
    """Build ``case`` on ``meta``: the spec, the methods, peft's config and the batch are checked,
    and peftlab's trainable count is compared with the reference's (peft's, or the plain model's
    trained in full)."""
    import torch

    from peftlab.errors import ModelError
    from peftlab.lab.speed import build
    from peftlab.lab.speed.impls import build_model, impl_names

    meta = torch.device("meta")
    base = build.build_base(spec.model_of(case), meta)
    build.make_batch(spec.batch_of(case), base.model.config, meta)
    weights = sum(p.numel() * p.element_size() for p in base.model.parameters())
    if case.kind == "generate":
        from peftlab.lab.speed.generate import dry_run_generate

        return dry_run_generate(spec, case, base)
    rows = []
    # the variants are peftlab's methods again, the compiled reference the reference again
    names = [n for n in impl_names(case) if not n.startswith("peftlab[") and not n.endswith("+compile")]
    for name in names:  # "peftlab" first
        count = build.trainable(build_model(name, base, case))
        rows.append({"case": case.name, "impl": name, "trainable_params": count, "weights_bytes": weights,
                     "batch": spec.batch_of(case).label(), "precisions": list(spec.precisions)})
        ours = rows[0]["trainable_params"]
        if name in ("peft", "hf") and count != ours and not case.count_differs:
            raise ModelError(f"cases.{case.name}: peftlab trains {ours:,} parameters but {name} trains {count:,}; "
                             f"the two configs do not describe the same method")
    return rows
