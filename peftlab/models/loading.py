"""Loading models: short names of the shipped models, local directories, hub ids, or a config.

``load_model(spec, seed)`` returns the HF model, its tokenizer and its family table. With
``init: random`` only the config (and tokenizer) of ``spec.name`` are read and the weights are
drawn from ``seed``, so a random-init run can be rebuilt exactly to evaluate its adapter.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftlab.errors import ModelError
from peftlab.models.quantize import quantization_config, quantized_device

log = logging.getLogger(__name__)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def models_dirs() -> list[Path]:
    """Where short names are looked up: ``$PEFTLAB_MODELS`` (colon-separated), then the repo's models/."""
    dirs = [Path(p) for p in os.environ.get("PEFTLAB_MODELS", "").split(os.pathsep) if p]
    return dirs + [Path(__file__).resolve().parents[2] / "models"]


def short_names() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for d in models_dirs():
        if d.is_dir():
            for sub in sorted(d.iterdir()):
                if (sub / "config.json").is_file():
                    out.setdefault(sub.name, sub)
    return out


def resolve_model_name(name: str) -> str:
    """A short name -> its directory; an existing path -> itself; a hub id -> itself; else error."""
    shorts = short_names()
    if name in shorts:
        return str(shorts[name])
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model path {name!r} exists but has no config.json")
        return str(path)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name
    if looks_like_path:
        raise ModelError(f"model path {name!r} does not exist")
    if not _HUB_ID.match(name):
        raise ModelError(
            f"model {name!r} is neither a short name ({', '.join(shorts) or 'none shipped'}), "
            f"an existing path, nor a hub id like 'google/flan-t5-base'"
        )
    return name


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    family: Any
    source: str  # the resolved directory or hub id


def _refused_pickle(e: Exception) -> bool:
    """torch's weights-only loader refusing a pickled ``.bin`` (its UnpicklingError, by name: peftlab
    never imports the pickle machinery)."""
    return type(e).__name__ == "UnpicklingError"


def _hub_error(name: str, e: Exception, source: str | None = None) -> ModelError:
    """One line for a model that would not load, worded for where it came from."""
    from safetensors import SafetensorError

    first = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if _refused_pickle(e):
        return ModelError(f"could not load model {name!r}: its pickled weights (.bin) hold more than tensors, "
                          f"which torch refuses to load (weights_only=True) for safety; convert them to "
                          f"safetensors with code you trust, or use another copy of the model")
    if source is not None and Path(source).is_dir():
        where = name if name == source else f"{name} ({source})"
        if isinstance(e, SafetensorError):
            files = ", ".join(sorted(p.name for p in Path(source).glob("*.safetensors")))
            return ModelError(f"could not load model {where}: damaged weights file ({files}): {first}")
        return ModelError(f"could not load model {where}, a local directory: {first}")
    return ModelError(f"could not load model {name!r}: not a short name or local directory, and the hub said: {first}")


def _load_error(e: Exception) -> bool:
    """What a damaged or foreign model directory raises while loading (not a peftlab bug)."""
    from safetensors import SafetensorError

    return isinstance(e, (OSError, ValueError, KeyError, SafetensorError)) or _refused_pickle(e)


def _where_from(name: str, revision, what: str = "model") -> dict:
    """``from_pretrained`` keywords for ``name``: nothing for a local directory; for a hub id,
    ``peftlab.models.hub`` decides (offline mode, an unreachable hub)."""
    if Path(name).is_dir():
        return {}
    from peftlab.models.hub import hub_kwargs

    return hub_kwargs(name, revision, what)


def load_model(spec, seed: int = 0) -> LoadedModel:
    """Build the model described by a ``ModelSpec`` (see ``peftlab.schema``)."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from peftlab.models.arch import family_of

    source = resolve_model_name(spec.name)
    where = _where_from(source, spec.revision)
    try:
        config = AutoConfig.from_pretrained(source, revision=spec.revision, **where)
    except Exception as e:
        if not _load_error(e):
            raise
        raise _hub_error(spec.name, e, source) from None
    family = family_of(config)
    auto = transformers.AutoModelForSeq2SeqLM if family.kind == "seq2seq" else transformers.AutoModelForCausalLM
    for key in spec.config:
        if not hasattr(config, key):
            raise ModelError(f"model.config.{key}: {type(config).__name__} has no such field")
    dtype = getattr(torch, _DTYPES[spec.dtype])
    quant = quantization_config(spec, dtype)
    if spec.init == "random":
        config.update(dict(spec.config))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = auto.from_config(config, dtype=dtype)
            if _declares_untied_head(source, spec.revision, config):
                _untie_head(model)
        if quant is not None:  # quantize the drawn weights the way from_pretrained quantizes real ones
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                model = _from_pretrained(auto, tmp, dtype=dtype, quantization_config=quant,
                                         device_map={"": quantized_device()})
    else:
        kw = {} if quant is None else {"quantization_config": quant, "device_map": {"": quantized_device()}}
        try:
            # adapter_kwargs: transformers 5.24 looks for a peft adapter without local_files_only
            hub = dict(where, adapter_kwargs=dict(where)) if where else {}
            model = _from_pretrained(auto, source, revision=spec.revision, dtype=dtype, **kw, **hub, **dict(spec.config))
        except Exception as e:
            if not _load_error(e):
                raise
            raise _hub_error(spec.name, e, source) from None
    tok_source = resolve_model_name(spec.tokenizer) if spec.tokenizer else source
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_source, **(where if tok_source == source else
                                                                 _where_from(tok_source, None, "tokenizer")))
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load a tokenizer from {tok_source!r}: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ModelError(
            f"tokenizer {tok_source!r} has {len(tokenizer)} tokens but the model's embedding has "
            f"{model.get_input_embeddings().num_embeddings}: they do not belong together"
        )
    return LoadedModel(model=model, tokenizer=tokenizer, family=family, source=source)


# -- untied LM heads (FLAN-T5) ---------------------------------------------------------------------
# transformers 5.24's T5Config forces tie_word_embeddings=True: T5 ties its encoder/decoder token
# embeddings to `shared` through that same flag, so it cannot be False. FLAN-T5 (and every T5 v1.1)
# checkpoint holds an `lm_head.weight` of its own beside `shared.weight`, with tie_word_embeddings:
# false in its config.json. What from_pretrained does with that (verified in tests/models/test_models.py):
# PreTrainedModel.tie_weights(missing_keys=...) sees both tensors in the checkpoint, finds them
# different, leaves them untied and drops the pair from `model.all_tied_weights_keys`, warning that
# the config should say tie_word_embeddings=False (advice T5Config cannot take). The loaded head is
# right; two things are not, and are fixed here: a later `model.tie_weights()` (resize_token_embeddings,
# accelerate's FSDP2 prepare, HF Trainer) recomputes the pairs from the class and the config and would
# silently overwrite the head with the embedding; and `init: random` would build a tied head, a
# different architecture (and parameter count) from the checkpoint it stands in for.

_UNTIED_WARNING = "but both are present in the checkpoints with different values, so we will NOT tie them"


def _from_pretrained(auto, source, **kw):
    """``auto.from_pretrained`` that keeps whatever heads the checkpoint holds untied, for good."""
    from transformers.utils import logging as hf_logging

    hf_log = hf_logging.get_logger("transformers.modeling_utils")
    untied = lambda record: _UNTIED_WARNING not in record.getMessage()  # noqa: E731 (said right by _pin_tied_pairs)
    hf_log.addFilter(untied)
    # transformers' own bar (a step per checkpoint tensor) says nothing the run's lines do not, in
    # the middle of them; a hub download keeps huggingface_hub's bar. Without set_tqdm_hook (early
    # transformers 5 releases) the bar stays.
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    previous = set_hook(_no_bar) if set_hook else None
    try:
        model = auto.from_pretrained(source, **kw)
    finally:
        hf_log.removeFilter(untied)
        if set_hook:
            set_hook(previous)
    _pin_tied_pairs(model)
    return model


def _no_bar(factory, args, kwargs):
    return factory(*args, **{**kwargs, "disable": True})


def _pin_tied_pairs(model) -> None:
    """Make the pairs from_pretrained actually tied the only ones ``tie_weights()`` ever ties."""
    declared = model.get_expanded_tied_weights_keys(all_submodels=False)  # from the class and the config
    kept = getattr(model, "all_tied_weights_keys", declared)
    if set(declared) != set(kept):
        model._tied_weights_keys = dict(kept)  # instance attribute: shadows the class's pairs
        log.info("kept untied, as the checkpoint holds them: %s", ", ".join(sorted(set(declared) - set(kept))))


def _declares_untied_head(source: str, revision, config) -> bool:
    """config.json says tie_word_embeddings: false, but the config class forced it true (T5)."""
    from transformers import PretrainedConfig

    raw, _ = PretrainedConfig.get_config_dict(source, revision=revision)
    return raw.get("tie_word_embeddings") is False and bool(getattr(config, "tie_word_embeddings", False))


def _untie_head(model) -> None:
    """Give a freshly drawn T5 its own LM head, drawn as T5 draws an untied one (N(0, factor))."""
    import torch

    head = model.get_output_embeddings()
    std = float(getattr(model.config, "initializer_factor", 1.0))
    head.weight = torch.nn.Parameter(torch.empty_like(head.weight).normal_(0.0, std))
    name = next(n for n, p in model.named_parameters(remove_duplicate=False) if p is head.weight)
    model.all_tied_weights_keys.pop(name, None)
    model._tied_weights_keys = dict(model.all_tied_weights_keys)
