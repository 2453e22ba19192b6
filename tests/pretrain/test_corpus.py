"""The v2 pretraining corpus builder (peftlab.pretrain.packages), offline: wheels are made here."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from peftlab.config import FieldError
from peftlab.data.splits import file_digest, split_of_digest
from peftlab.errors import DataError
from peftlab.pretrain import scaling
from peftlab.pretrain.dedup import looks_generated
from peftlab.pretrain.packages import CorpusSpec, build, build_dir, classify_licence, corpus_files, licence_of

BODIES = [
    "def area(width, height):\n    total = width * height\n    if total < 0:\n        raise ValueError('negative')\n    return total\n",
    "def biggest(items):\n    best = None\n    for item in items:\n        if best is None or item > best:\n            best = item\n    return best\n",
    "def read_lines(path):\n    with open(path, encoding='utf-8') as fh:\n        rows = [line.rstrip() for line in fh]\n    return [r for r in rows if r]\n",
    "def merge(a, b):\n    out = dict(a)\n    for key, value in b.items():\n        out.setdefault(key, []).append(value)\n    return out\n",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "def word_counts(text):\n    counts = {}\n    for word in text.split():\n        counts[word] = counts.get(word, 0) + 1\n    return counts\n",
    "def clamp(x, low, high):\n    if x < low:\n        return low\n    if x > high:\n        return high\n    return x\n",
    "def chunks(seq, size):\n    result = []\n    for start in range(0, len(seq), size):\n        result.append(seq[start:start + size])\n    return result\n",
    "def is_prime(n):\n    if n < 2:\n        return False\n    for d in range(2, int(n ** 0.5) + 1):\n        if n % d == 0:\n            return False\n    return True\n",
    "def flatten(nested):\n    flat = []\n    for part in nested:\n        flat.extend(part if isinstance(part, list) else [part])\n    return flat\n",
]
_STEMS: dict[str, int] = {}


def source(stem: str, salt: int = 0) -> str:
    """A small module: a function no other stem's module shares; ``salt`` changes only its docstring."""
    index = _STEMS.setdefault(stem, len(_STEMS))
    table = "".join(f"\ndef {stem}_{k}(x):\n    return x * {index * 1000 + k} + {index * 7 + k * k}\n" for k in range(15))
    return f'"""Module {stem}, variant {salt}."""\n\n\n{BODIES[index % len(BODIES)]}{table}'


def make_wheel(cache: Path, name: str, version: str, files: dict[str, str], licence: str = "MIT") -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA",
                    f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\nLicense-Expression: {licence}\n")
        for rel, text in files.items():
            zf.writestr(rel, text)
    return path


def train_split_text(stem: str) -> tuple[str, str]:
    """(name, text) of a small module whose bytes fall in code→doc's train split."""
    for i in range(1000):
        text = source(stem, i)
        if split_of_digest(file_digest(text.encode())) == "train":
            return stem, text
    raise AssertionError


def eval_split_text(stem: str) -> tuple[str, str]:
    for i in range(1000):
        text = source(stem, i)
        if split_of_digest(file_digest(text.encode())) != "train":
            return stem, text
    raise AssertionError


@pytest.fixture
def world(tmp_path):
    """A stdlib of three files (one in an evaluation split), two packages, one held-out package."""
    cache = tmp_path / "wheels"
    a_name, a = train_split_text("alpha")
    b_name, b = train_split_text("beta")
    e_name, e = eval_split_text("evalmod")
    stdlib = [("alpha.py", a.encode()), ("beta.py", b.encode()), ("evalmod.py", e.encode())]
    _, held = train_split_text("heldfun")
    _, own = train_split_text("owncode")
    _, other = train_split_text("othercode")
    renamed = own.replace("Module owncode", "Module mycode", 1) + "\nVERSION = 2\n"  # a renamed, edited copy
    make_wheel(cache, "heldpkg", "1.0", {"heldpkg/core.py": held})
    make_wheel(cache, "pkga", "1.0", {
        "pkga/own.py": own,
        "pkga/copy_of_alpha.py": a,  # exact copy of a stdlib file
        "pkga/vendor/renamed.py": renamed,  # near-duplicate of own.py
        "pkga/_vendor/heldpkg/core.py": "x = 1\n",  # a vendored held-out package
        "pkga/leak.py": source("leakhost") + "\n\n" + BODIES[_STEMS["evalmod"] % len(BODIES)],  # one eval function
        "pkga/gen.py": "DATA = [" + "1, " * 600 + "]\n",  # generated
        "pkga/empty.py": "",
    })
    make_wheel(cache, "pkgb", "2.0", {"pkgb/other.py": other})
    make_wheel(cache, "gplpkg", "1.0", {"gplpkg/x.py": source("gplthing")}, licence="GPL-3.0-only")
    spec = CorpusSpec(packages=("pkga==1.0", "gplpkg==1.0", "pkgb==2.0"), heldout=("heldpkg==1.0",))
    return spec, cache, stdlib


def test_build_keeps_the_right_files_and_says_why_the_others_went(world, tmp_path):
    spec, cache, stdlib = world
    m = build(spec, cache, tmp_path / "out", stdlib=stdlib, log=lambda s: None)
    kept = [(f["source"], f["path"]) for f in m["files"]]
    assert kept == [("stdlib", "alpha.py"), ("stdlib", "beta.py"), ("pkga", "pkga/own.py"), ("pkgb", "pkgb/other.py")]
    pkga = m["packages"][0]
    assert pkga["dropped"] == {"empty or not UTF-8": 1, "exact duplicate": 1, "generated: line over 1000 characters": 1,
                               "holds a held-out/evaluation function verbatim": 1, "near-duplicate": 1,
                               "under a held-out package's directory": 1}
    gpl = m["packages"][1]
    assert gpl["licence_class"] == "copyleft" and gpl["kept"] == 0 and "GPL-3.0" in gpl["excluded"]
    assert [h["pin"] for h in m["heldout"]] == ["heldpkg==1.0"] and m["heldout_files"][0]["path"] == "heldpkg/core.py"
    files = corpus_files(tmp_path / "out")
    assert [p.name for p in files] == ["alpha.py", "beta.py", "own.py", "other.py"] and all(p.is_file() for p in files)


def test_held_out_packages_never_reach_the_corpus(world, tmp_path):
    spec, cache, stdlib = world
    held_text = zipfile.ZipFile(next(cache.glob("heldpkg-*.whl"))).read("heldpkg/core.py")
    make_wheel(cache, "pkgc", "1.0", {"pkgc/copied.py": held_text.decode(),  # exact copy
                                      "pkgc/tweaked.py": held_text.decode().replace("Module heldfun", "Module tweak", 1)})
    spec = CorpusSpec(packages=spec.packages + ("pkgc==1.0",), heldout=spec.heldout)
    m = build(spec, cache, tmp_path / "out", stdlib=stdlib, log=lambda s: None)
    assert not any(f["source"] in ("heldpkg", "pkgc") for f in m["files"])
    assert m["packages"][-1]["dropped"] == {"exact copy of a held-out/evaluation file": 1,
                                            "near-duplicate of a held-out/evaluation file": 1}


def test_build_is_deterministic_and_pins_the_wheels(world, tmp_path):
    spec, cache, stdlib = world
    one = build_dir_with(spec, cache, tmp_path / "one", stdlib)
    two = build_dir_with(spec, cache, tmp_path / "two", stdlib)
    assert one["fingerprint"] == two["fingerprint"] and one["files"] == two["files"]
    pinned = {"packages": [{**p, "sha256": "0" * 64} if p["pin"] == "pkgb==2.0" else p for p in one["packages"]],
              "heldout": one["heldout"]}
    with pytest.raises(DataError, match="pkgb==2.0"):
        build(spec, cache, tmp_path / "three", stdlib=stdlib, pinned=pinned, log=lambda s: None)


def build_dir_with(spec, cache, out, stdlib):
    return build(spec, cache, out, stdlib=stdlib, log=lambda s: None)


def test_build_dir_replaces_only_its_own_output(world, tmp_path):
    spec, cache, _ = world
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("packages: [pkgb==2.0]\nheldout: [heldpkg==1.0]\nstdlib: false\n")
    with pytest.raises(DataError, match="not a corpus"):
        build_dir(spec_file, out, cache=cache, log=lambda s: None)
    assert (out / "notes.txt").read_text() == "a user's file"
    m = build_dir(spec_file, tmp_path / "fresh", cache=cache, log=lambda s: None)
    assert json.loads((tmp_path / "fresh" / "manifest.json").read_text())["fingerprint"] == m["fingerprint"]


def test_spec_rejects_unpinned_and_overlapping_packages():
    with pytest.raises(FieldError, match="pinned"):
        CorpusSpec(packages=("numpy",), heldout=())
    with pytest.raises(FieldError, match="both read and held out"):
        CorpusSpec(packages=("Rich==1.0",), heldout=("rich==2.0",))


@pytest.mark.parametrize("text, expected", [
    ("MIT", "permissive"), ("BSD-3-Clause AND 0BSD AND MIT AND Zlib AND CC0-1.0", "permissive"),
    ("Apache-2.0 OR BSD-2-Clause", "permissive"), ("GPL-2.0-or-later", "copyleft"), ("LGPL-2.1", "copyleft"),
    ("MPL-2.0", "copyleft"), ("Apache-2.0 OR GPL-2.0", "permissive"), ("MIT AND GPL-3.0", "copyleft"),
    ("", "unknown"), ("Proprietary", "unknown"), ("BSD License", "permissive"),
])
def test_licence_classes(text, expected):
    assert classify_licence(text) == expected


def test_licence_reads_the_expression_or_the_classifiers():
    assert licence_of("Name: x\nLicense-Expression: MIT\nClassifier: License :: OSI Approved :: BSD License\n") == "MIT"
    assert licence_of("Name: x\nLicense: UNKNOWN\nClassifier: License :: OSI Approved :: BSD License\n") == "BSD License"


def test_generated_file_filters():
    assert looks_generated("x = 1\n") is None
    assert looks_generated("x = [" + "1," * 600 + "]\n") == "line over 1000 characters"
    assert looks_generated("# " + "=" * 200 + "\n") is not None


def test_scaling_choice_is_the_lowest_predicted_loss_among_eligible_sizes():
    rows = [{"name": "small", "parameters": 5e6, "tokens_per_second": 6000},
            {"name": "mid", "parameters": 10e6, "tokens_per_second": 3000},
            {"name": "big", "parameters": 40e6, "tokens_per_second": 1000}]
    out = scaling.choose(rows, 3600 * 10, max_params=25e6)
    losses = {r["name"]: r["predicted_loss"] for r in out["rows"]}
    assert out["chosen"] == min(("small", "mid"), key=losses.get)
    assert out["rows"][2]["ineligible"].startswith("over")
    assert losses["mid"] == pytest.approx(scaling.predicted_loss(10e6, 3000 * 36000))
    with pytest.raises(ValueError):
        scaling.choose(rows, 10, min_tokens=1e12)


@pytest.mark.parametrize("name", ["mini-t5", "mini-llama"])
def test_pretrain_on_a_corpus_spec_and_score_the_held_out_packages_per_byte(world, tmp_path, name):
    """The v2 recipe end to end on a tiny built corpus: the model directory carries the compact
    manifest (per package: licence, files, tokens), and the held-out packages score in bits per byte."""
    import transformers

    from peftlab.pretrain.heldout import bits_per_byte, heldout_texts
    from peftlab.pretrain.recipe import load_pretrain_config, pretrain

    spec, cache, _ = world
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("packages: [pkga==1.0, pkgb==2.0]\nheldout: [heldpkg==1.0]\nstdlib: false\n")
    corpus = tmp_path / "corpus"
    build_dir(spec_file, corpus, cache=cache, log=lambda s: None)
    arch = (["architecture.d_model=32", "architecture.d_kv=8", "architecture.d_ff=64", "architecture.num_layers=1",
             "architecture.num_decoder_layers=1", "architecture.num_heads=4"] if name == "mini-t5" else
            ["architecture.hidden_size=32", "architecture.intermediate_size=64", "architecture.num_hidden_layers=1",
             "architecture.num_attention_heads=4", "architecture.num_key_value_heads=2"])
    root = Path(__file__).resolve().parents[2] / "configs" / "pretrain"
    cfg = load_pretrain_config(root / f"{name}-v2.yaml", [
        f"corpus_spec={spec_file}", f"corpus_dir={corpus}", "vocab_size=400", "inputs_length=32", "heldout_percent=50",
        "eval_batches=1", "train.batch_size=2", "train.max_steps=2", "train.warmup_steps=1", "train.log_every=1",
        "train.mixed_precision=no", "train.num_threads=null", *arch])
    out = tmp_path / name
    stats = pretrain(cfg, out, progress=False, command="test")
    compact = json.loads((out / "corpus_manifest.json").read_text())
    assert [p["pin"] for p in compact["packages"]] == ["pkga==1.0", "pkgb==2.0"]
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert compact["files"] == len(manifest["files"]) >= 2 and compact["heldout_files"] == 1
    assert compact["fingerprint"] == manifest["fingerprint"] and "files" not in compact["packages"][0]
    assert sum(p["train_tokens"] for p in compact["packages"]) == stats["corpus"]["train_tokens"] > 0
    texts = heldout_texts(manifest, cache)
    assert len(texts) == 1 and "heldfun" in texts[0]
    scored = bits_per_byte(out, texts)
    assert scored["bytes"] == len(texts[0].encode()) or scored["objective"] == "span_corruption"
    assert 0 < scored["bits_per_byte"] < 20 and scored["tokens"] > 0
    assert transformers.AutoConfig.from_pretrained(out).vocab_size == stats["vocab_size"]
