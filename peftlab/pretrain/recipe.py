"""``peftlab pretrain CONFIG --out DIR``: make one of peftlab's small pretrained models.

corpus (stdlib minus code→doc valid/test files) -> byte-level BPE tokenizer -> packed examples
(T5 span corruption, or causal LM) -> the shared train loop (``auto`` precision, atomic checkpoints,
resumable) -> a plain Hugging Face model directory with a model card. A few corpus files are held
out (by a second hash of their bytes) to measure held-out loss against a randomly initialised twin.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch

from peftlab import files
from peftlab.config import to_dict
from peftlab.device import hardware
from peftlab.provenance import versions
from peftlab.errors import ConfigError, DataError
from peftlab.schema import TrainSpec

log = logging.getLogger(__name__)

TRAIN_LOG = "train_log.jsonl"  # one row per logging step, as a run's


@dataclass(frozen=True)
class PretrainConfig:
    name: str  # model name in the card, e.g. mini-t5
    objective: Literal["span_corruption", "causal"]
    architecture: dict[str, Any]  # HF config fields; model_type "t5" or "llama" picks the class
    train: TrainSpec = field(default_factory=TrainSpec)
    tokenizer: Optional[str] = None  # directory of an existing tokenizer; None = train one here
    vocab_size: int = 8192
    corpus: Optional[tuple[str, ...]] = None  # source roots; None = this interpreter's stdlib
    # a corpus spec (peftlab.pretrain.packages; relative paths are relative to the config file): the
    # stdlib plus pinned PyPI packages. Built once into corpus_dir (default ~/.cache/peftlab/corpus-<spec hash>)
    corpus_spec: Optional[str] = None
    corpus_dir: Optional[str] = None
    inputs_length: int = 256  # T5 encoder input / causal window, in tokens
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    heldout_percent: int = 2  # corpus files held out for held-out loss (never trained on)
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    eval_batches: int = 40  # held-out batches per evaluation

    def __post_init__(self):
        from peftlab.config import FieldError, at_least

        at_least(self, 360, "vocab_size")  # 104 special tokens + 256 bytes
        at_least(self, 8, "inputs_length")
        at_least(self, 1, "mean_span_length", "heldout_percent", "checkpoint_every", "keep_checkpoints",
                 "eval_batches")
        if not 0 < self.noise_density < 1:
            raise FieldError("noise_density", f"must be between 0 and 1 (exclusive), got {self.noise_density}")
        if self.heldout_percent >= 100:
            raise FieldError("heldout_percent", f"must be < 100 (something must be left to train on), "
                                                f"got {self.heldout_percent}")
        if self.architecture.get("model_type") not in ("t5", "llama"):
            raise ValueError("architecture.model_type must be 't5' or 'llama'")
        if (self.objective == "span_corruption") != (self.architecture["model_type"] == "t5"):
            raise ValueError("span_corruption goes with model_type t5, causal with llama")
        limit = self.architecture.get("max_position_embeddings")
        if self.objective == "causal" and limit is not None and self.inputs_length > limit:
            raise FieldError("inputs_length", f"{self.inputs_length} tokens is longer than the model allows "
                                              f"(architecture.max_position_embeddings: {limit})")


def heldout(digest: str, percent: int) -> bool:
    """A second, independent hash bucket of the file bytes (the first decides code→doc splits)."""
    return int(digest[8:16], 16) % 100 < percent


class PackedPlan:
    """Fixed-length examples, re-corrupted with fresh noise every epoch (T5), in a seeded order."""

    def __init__(self, make_epoch, batch_size: int, seed: int):
        self.make_epoch, self.batch_size, self.seed = make_epoch, batch_size, seed
        self.rank, self.world = 0, 1
        self._epoch, self._tensors = None, None

    def tensors(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._epoch != epoch:
            self._tensors, self._epoch = self.make_epoch(epoch), epoch
        return self._tensors

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        n = len(self.tensors(epoch)[0])
        order = np.random.default_rng([self.seed, epoch]).permutation(n).tolist()
        batches = [order[i : i + self.batch_size] for i in range(0, n - self.batch_size + 1, self.batch_size)]
        usable = len(batches) - len(batches) % self.world
        return batches[:usable][self.rank :: self.world]

    def make_batch(self, rows: list[int], epoch: int = 0) -> dict[str, torch.Tensor]:
        inputs, labels = self.tensors(epoch)
        idx = torch.tensor(rows)
        x = inputs[idx].long()  # held as int32 (half the memory of a large corpus)
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": labels[idx].long()}

    def iterate(self, epoch: int = 0, index: int = 0):
        while True:
            batches = self.epoch_batches(epoch)
            for i in range(index, len(batches)):
                yield epoch, i, self.make_batch(batches[i], epoch)
            epoch, index = epoch + 1, 0


def _plan(cfg: PretrainConfig, docs: list[np.ndarray], tok, seed: int, batch_size: int) -> PackedPlan:
    from peftlab.pretrain.objectives import pack_causal_array, pack_span_corruption_array
    from peftlab.pretrain.tokenizer import sentinel_ids

    if cfg.objective == "causal":
        windows = torch.from_numpy(pack_causal_array(docs, cfg.inputs_length, tok.bos_token_id, tok.eos_token_id))
        if len(windows) == 0:
            raise DataError("pretraining corpus is shorter than one window")
        return PackedPlan(lambda epoch: (windows, windows), batch_size, seed)
    sentinels = sentinel_ids(tok)

    def make_epoch(epoch: int):
        rng = np.random.default_rng([seed, epoch])
        inputs, targets = pack_span_corruption_array(docs, cfg.inputs_length, sentinels, tok.eos_token_id, rng,
                                                     cfg.noise_density, cfg.mean_span_length)
        if len(inputs) == 0:
            raise DataError("pretraining corpus is shorter than one span-corruption chunk")
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    return PackedPlan(make_epoch, batch_size, seed)


def _tokenizer(cfg: PretrainConfig, corpus, train_idx: list[int], out: Path):
    from transformers import AutoTokenizer

    from peftlab.pretrain.tokenizer import save_tokenizer, train_tokenizer

    if cfg.tokenizer:
        from peftlab.models.loading import resolve_model_name

        src = resolve_model_name(cfg.tokenizer) if not Path(cfg.tokenizer).is_dir() else cfg.tokenizer
        try:
            tok = AutoTokenizer.from_pretrained(str(src))
        except (OSError, ValueError) as e:
            raise ConfigError(f"tokenizer: cannot load a tokenizer from {cfg.tokenizer!r}: {e}") from None
    else:
        texts = (corpus.files[i].read_bytes().decode("utf-8") for i in train_idx)
        save_tokenizer(train_tokenizer(texts, cfg.vocab_size), out)
        tok = AutoTokenizer.from_pretrained(str(out))
    if cfg.objective == "span_corruption":
        from peftlab.pretrain.tokenizer import sentinel_ids

        sentinel_ids(tok)  # fail now, not after an hour of tokenising
    if cfg.tokenizer:
        tok.save_pretrained(str(out))
    return tok


def model_from_config(cfg: PretrainConfig, tok, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    arch = {k: v for k, v in cfg.architecture.items() if k != "model_type"}
    common = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if cfg.architecture["model_type"] == "t5":
        config = T5Config(decoder_start_token_id=tok.pad_token_id, **common, **arch)
        cls = T5ForConditionalGeneration
    else:
        config = LlamaConfig(bos_token_id=tok.bos_token_id, **common, **arch)
        cls = LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)


def pretrain(cfg: PretrainConfig, out: Path, *, work: Optional[Path] = None, resume: bool = False,
             progress: bool = True, command: Optional[str] = None, halt_at: Optional[int] = None) -> dict:
    """Run the recipe into the model directory ``out``; checkpoints live in ``work`` (default out/checkpoints).

    ``halt_at`` stops after that step's checkpoint without writing the model (continue with ``resume``).
    One process owns ``out`` at a time: a second one (a ``--resume`` while the first still runs)
    would write the same checkpoints.
    """
    files.make_dir(out, "--out")
    with files.owned(out):
        return _pretrain(cfg, out, work=work, resume=resume, progress=progress, command=command, halt_at=halt_at)


def _pretrain(cfg: PretrainConfig, out: Path, *, work: Optional[Path], resume: bool, progress: bool,
              command: Optional[str], halt_at: Optional[int]) -> dict:
    from peftlab.pretrain.tokenizer import encode_sources
    from peftlab.train.loop import LoopOptions, make_accelerator, evaluate_loss, jsonl_writer, train

    work = work or out / "checkpoints"
    if not resume and any(work.glob("step-*")):
        raise ConfigError(f"{work} holds checkpoints of an earlier run: pass --resume, or choose another --out/--work")
    t_start = time.time()
    corpus, manifest = _corpus(cfg)
    held = [i for i, d in enumerate(corpus.digests) if heldout(d, cfg.heldout_percent)]
    train_idx = [i for i in range(len(corpus.files)) if not heldout(corpus.digests[i], cfg.heldout_percent)]
    if not held or not train_idx:
        raise DataError(f"corpus of {len(corpus.files)} files is too small to hold out {cfg.heldout_percent}%")
    tok = _tokenizer(cfg, corpus, train_idx, out)
    texts = lambda idx: (corpus.files[i].read_bytes().decode("utf-8") for i in idx)  # noqa: E731
    as_arrays = lambda idx: [np.asarray(d, dtype=np.int32) for d in encode_sources(tok, texts(idx))]  # noqa: E731
    train_docs, held_docs = as_arrays(train_idx), as_arrays(held)
    corpus_tokens = sum(map(len, train_docs))
    log.info("corpus: %d files (%d held out), %d training tokens", len(corpus.files), len(held), corpus_tokens)
    spec = cfg.train
    plan = _plan(cfg, train_docs, tok, spec.seed, spec.batch_size)
    held_plan = _plan(cfg, held_docs, tok, spec.seed + 1, spec.batch_size)
    model = model_from_config(cfg, tok, spec.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: %s parameters", cfg.name, f"{n_params:,}")
    accel = make_accelerator(spec)
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    random_twin_loss = evaluate_loss(model_from_config(cfg, tok, spec.seed).to(accel.device), held_plan, accel, cfg.eval_batches)
    if not resume:
        (out / TRAIN_LOG).unlink(missing_ok=True)
    result = train(model, plan, spec, eval_plan=None, log_row=jsonl_writer(out / TRAIN_LOG),
                   options=LoopOptions(checkpoint_dir=work, checkpoint_every=cfg.checkpoint_every,
                                       keep_checkpoints=cfg.keep_checkpoints, resume=resume,
                                       progress=progress, desc=f"pretrain {cfg.name}", halt_at=halt_at))
    if result.stopped_by == "halted":
        return {"name": cfg.name, "halted_at_step": result.steps, "checkpoints": str(work)}
    held_loss = evaluate_loss(model, held_plan, accel, cfg.eval_batches)
    final_loss = result.final_loss
    if final_loss is None:  # resumed at the end of the budget: the last logged window's loss
        rows = [json.loads(ln) for ln in (out / TRAIN_LOG).read_text().splitlines() if '"loss"' in ln]
        final_loss = rows[-1]["loss"] if rows else None
    hw = hardware()
    stats = {
        "name": cfg.name, "objective": cfg.objective, "parameters": n_params, "vocab_size": len(tok),
        "corpus": {**corpus.summary(), "heldout_files": len(held), "train_files": len(train_idx),
                   "train_tokens": corpus_tokens, **({"spec": cfg.corpus_spec} if manifest else {})},
        "steps": result.steps, "tokens_seen": result.tokens, "train_seconds": result.train_seconds,
        "tokens_per_second": result.tokens_per_second, "final_train_loss": final_loss,
        "heldout_loss": held_loss, "random_init_heldout_loss": random_twin_loss,
        "mixed_precision": spec.mixed_precision, "precision": result.precision,
        "hardware": hw["device"], "cpu_capability": hw["cpu_capability"], "native_bf16": hw["native_bf16"],
        "wall_seconds_this_invocation": time.time() - t_start,
        "command": command or "peftlab pretrain " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        "config": to_dict(cfg), "versions": versions(),
    }
    if manifest:
        stats["corpus"]["per_source"] = _tokens_per_source(manifest, train_idx, train_docs)
        files.write_json(out / "corpus_manifest.json", _compact_manifest(manifest, stats["corpus"]["per_source"]))
    save_model(model, tok, out, stats)
    return stats


def _corpus(cfg: PretrainConfig):
    """(Corpus, manifest or None): the corpus spec's build (made once, then reused), or source roots."""
    from peftlab.pretrain.corpus import Corpus, build_corpus

    if not cfg.corpus_spec:
        return build_corpus([Path(p) for p in cfg.corpus] if cfg.corpus else None), None
    from peftlab.pretrain.packages import build_dir, corpus_files, load_corpus_spec, read_manifest, spec_dict

    spec_path = Path(cfg.corpus_spec)
    spec = load_corpus_spec(spec_path)
    where = Path(cfg.corpus_dir) if cfg.corpus_dir else default_corpus_dir(spec_path)
    if not (where / "manifest.json").is_file():
        build_dir(spec_path, where, log=log.info)
    manifest = read_manifest(where)
    if manifest["spec"] != spec_dict(spec):
        raise ConfigError(f"{where} was built from another corpus spec than {spec_path}: rebuild it with "
                          f"`peftlab data corpus {spec_path} --out {where}`, or set corpus_dir elsewhere")
    return Corpus(files=corpus_files(where), digests=[f["sha256"] for f in manifest["files"]]), manifest


def default_corpus_dir(spec_path: Path) -> Path:
    import hashlib

    digest = hashlib.sha256(Path(spec_path).read_bytes()).hexdigest()[:12]
    return Path.home() / ".cache" / "peftlab" / f"corpus-{Path(spec_path).stem}-{digest}"


def _tokens_per_source(manifest: dict, train_idx: list[int], train_docs: list) -> dict:
    """Training tokens (and files) per corpus source: the stdlib and each package."""
    out: dict[str, dict] = {}
    for i, doc in zip(train_idx, train_docs):
        row = out.setdefault(manifest["files"][i]["source"], {"files": 0, "tokens": 0})
        row["files"] += 1
        row["tokens"] += len(doc)
    return out


def _compact_manifest(manifest: dict, per_source: dict) -> dict:
    """What is committed beside the model: per package (pin, wheel SHA-256, licence, files kept,
    tokens trained on, what was dropped and why), the held-out packages, the file-set fingerprint."""
    from peftlab.pretrain.packages import normalize_name

    packages = [{**{k: v for k, v in p.items()}, "train_tokens": per_source.get(normalize_name(p["pin"]), {}).get("tokens", 0)}
                for p in manifest["packages"]]
    stdlib = manifest["stdlib"] and {**manifest["stdlib"], "train_tokens": per_source.get("stdlib", {}).get("tokens", 0)}
    return {k: manifest[k] for k in ("corpus_version", "spec", "fingerprint", "bytes")} | {
        "files": len(manifest["files"]), "stdlib": stdlib, "packages": packages, "heldout": manifest["heldout"],
        "heldout_files": len(manifest["heldout_files"])}


def save_model(model, tok, out: Path, stats: dict) -> None:
    """Write the HF directory: bf16 safetensors, config, generation config, tokenizer, model card."""
    model = model.to(torch.bfloat16)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    _float32_by_default(out / "config.json")
    tok.save_pretrained(str(out))
    stats["logits_check"] = reloaded_logits_check(out)
    files.write_json(out / "pretrain_stats.json", stats)
    from peftlab.pretrain.card import model_card

    files.write_text(out / "README.md", model_card(stats))


def _float32_by_default(config_json: Path) -> None:
    """The weights stay bf16 on disk (half the size), but config.json says float32: transformers 5
    loads a model in config.json's ``dtype`` by default, and a bf16 base gives other outputs than
    peftlab's (which loads in float32) and runs very slowly on CPUs without native bf16. Upcast
    bf16 -> fp32 is exact, so the logits check is the same either way."""
    config = json.loads(config_json.read_text())
    config["dtype"] = "float32"
    files.write_text(config_json, json.dumps(config, indent=2, sort_keys=True) + "\n")


CHECK_TEXT = "def add(a, b):\n    return a + b\n"


def reloaded_logits_check(model_dir: Path) -> dict:
    """``logits_check`` of the directory as plain transformers loads it (buffers such as RoPE's
    inverse frequencies are rebuilt at load time, so the in-memory model is not the reference)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_dir)
    auto = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
    return logits_check(auto.from_pretrained(model_dir), transformers.AutoTokenizer.from_pretrained(model_dir))


def logits_check(model, tok) -> dict:
    """Logits on a fixed input, recorded beside the weights so a test can see they never drift."""
    ids = torch.tensor([tok(CHECK_TEXT, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
    model = model.float().eval()
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            logits = model(input_ids=ids, decoder_input_ids=ids[:, :4]).logits
        else:
            logits = model(input_ids=ids).logits
    return {"text": CHECK_TEXT, "first": [round(float(v), 4) for v in logits[0, -1, :8]],
            "sum": round(float(logits.double().sum()), 2), "argmax": logits[0].argmax(-1).tolist()}


def load_pretrain_config(path: Path, overrides=()) -> PretrainConfig:
    """The recipe at ``path``; a relative ``corpus_spec`` is taken relative to the recipe's folder."""
    import dataclasses

    from peftlab.config import load_config

    cfg = load_config(PretrainConfig, path, overrides)
    if cfg.corpus_spec and not Path(cfg.corpus_spec).is_absolute():
        cfg = dataclasses.replace(cfg, corpus_spec=str((Path(path).parent / cfg.corpus_spec).resolve()))
    return cfg


def dump_stats(stats: dict) -> str:
    return json.dumps({k: v for k, v in stats.items() if k != "config"}, indent=2)
