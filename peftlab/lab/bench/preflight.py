"""Checks a bench (or search) makes before its first run, so that a mistake costs seconds, not the
hours of the runs before it: every planned method list is applied to its model built on the meta
device (shapes only, nothing allocated), which is where a method refuses a model family, a missing
sub-layer or a composition; and a digest of what the spec plans, which every run's process checks so
that a spec edited while the bench runs cannot train one method and record it under another's name.
"""

from __future__ import annotations

import hashlib
import json
import logging

from peftlab.errors import ConfigError, PeftlabError

log = logging.getLogger(__name__)


def plan_digest(spec, runs) -> str:
    """SHA-256 of the spec's fields and every planned run's directory, stage and full config (not where
    the runs run: a bench's jobs still queued on a cluster are valid for a restart on another launcher)."""
    from peftlab.config import to_dict
    from peftlab.lab.launch.spec import LAUNCH_FIELDS

    planned = [(r.rel, r.stage, to_dict(r.config)) for r in runs]
    fields = {k: v for k, v in to_dict(spec).items() if k not in LAUNCH_FIELDS}
    text = json.dumps([fields, planned], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_applicable(runs) -> None:
    """Apply each distinct (model, methods, tasks) of ``runs`` to its model on the meta device; one
    ``ConfigError`` names every pair that does not apply. A model whose config cannot be read here
    (a hub id offline) is left to its runs, with a warning."""
    from peftlab.config import to_dict

    seen, problems, unreadable = set(), [], set()
    for run in runs:
        cfg = run.config
        key = json.dumps([to_dict(cfg.model), to_dict(cfg.methods), len(cfg.data.tasks)], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            _apply_on_meta(cfg)
        except _Unreadable as e:
            unreadable.add(str(e))
        except PeftlabError as e:
            problems.append(f"{run.method!r} on {cfg.model.name} ({run.task}): {e}")
        except (ValueError, TypeError, RuntimeError, NotImplementedError) as e:
            problems.append(f"{run.method!r} on {cfg.model.name} ({run.task}): {type(e).__name__}: {e}")
    for name in sorted(unreadable):
        log.warning("%s: its config could not be read here, so its methods are checked only when its runs start",
                    name)
    if problems:
        raise ConfigError("these methods do not apply to their model (checked before any run):\n  "
                          + "\n  ".join(problems))


class _Unreadable(Exception):
    pass


def _apply_on_meta(cfg) -> None:
    import torch
    import transformers

    from peftlab.lab.run import run_methods
    from peftlab.methods import apply_methods
    from peftlab.models.arch import family_of
    from peftlab.models.loading import resolve_model_name

    try:
        source = resolve_model_name(cfg.model.name)
        config = transformers.AutoConfig.from_pretrained(source, revision=cfg.model.revision,
                                                         local_files_only=True)
    except (OSError, ValueError, PeftlabError):
        raise _Unreadable(cfg.model.name) from None
    config.update(dict(cfg.model.config))
    family = family_of(config)
    auto = transformers.AutoModelForSeq2SeqLM if family.kind == "seq2seq" else transformers.AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    apply_methods(model, run_methods(cfg))  # as the run applies them (multi-task methods sized)
