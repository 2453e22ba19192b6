"""The v2 pretraining corpus: the standard library plus pinned PyPI packages, deduplicated.

A corpus spec (``configs/pretrain/corpus-v2.yaml``) names packages by ``name==version``. Each is
fetched from the package registry with ``pip download`` (wheels only, for one fixed platform and
Python, so a fresh machine fetches the same files; the manifest records each file's SHA-256 and a
later build refuses a different one), and read straight from the wheel. Then, in a fixed order
(the stdlib first, then the packages as listed, files by path):

* a package whose licence is not permissive (copyleft, or none stated) is left out whole;
* files that look generated or minified are dropped (mean line > 100 or a line > 1,000
  characters, or under 25% alphanumeric: the filters of The Stack / StarCoder);
* exact duplicates (SHA-256) and near-duplicates (MinHash of word 5-gram shingles, estimated
  Jaccard >= ``near_dup_threshold``, through LSH) of an earlier file are dropped — vendored
  copies, generated model files and "Copied from" code repeat a lot;
* nothing the evaluation reads may leak in: the stdlib's valid/test files (by the split rule code→doc
  uses) and every file of the **held-out packages** (the cross-project test packages) are
  "forbidden" — a file that is a near-duplicate of one, lives under a directory named like a
  held-out package (``pip/_vendor/rich``), or contains one of their functions verbatim (4+ lines),
  is dropped too.

The held-out packages are fetched the same way: their files are the held-out evaluation set
(``heldout_files``), on which v1 and v2 models are compared.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import re
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from peftlab.errors import ConfigError, DataError
from peftlab.files import sha256_file
from peftlab.pretrain.dedup import FunctionIndex, NearDuplicates, looks_generated

CORPUS_VERSION = 1  # bump when the rules above change what a spec builds

# SPDX ids (and the classifier/free-text spellings wheels use) that we accept; anything copyleft
# or unrecognised is left out. Matching is on words, case-insensitive.
PERMISSIVE = ("mit", "mit-cmu", "bsd", "bsd-2-clause", "bsd-3-clause", "0bsd", "apache", "apache-2.0",
              "apache software license", "psf", "python software foundation", "psf-2.0", "isc", "zlib",
              "hpnd", "unlicense", "cc0-1.0", "mit license", "bsd license", "python")
COPYLEFT = ("gpl", "lgpl", "agpl", "mpl", "mozilla", "epl", "eclipse", "cddl", "eupl", "gnu", "copyleft", "osl")


@dataclass(frozen=True)
class CorpusSpec:
    packages: tuple[str, ...]  # "name==version", read for pretraining in this order
    heldout: tuple[str, ...]  # "name==version": never read; their files are the held-out evaluation set
    python_version: str = "3.11"  # the wheels fetched are for this Python ...
    platforms: tuple[str, ...] = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                  "manylinux2014_x86_64", "manylinux1_x86_64")  # ... and these platform tags
    near_dup_threshold: float = 0.8
    num_perm: int = 128  # MinHash permutations
    shingle: int = 5  # words per shingle
    min_function_lines: int = 4  # verbatim-function leak check: functions at least this long
    stdlib: bool = True  # read this interpreter's stdlib first (its train-split files; its valid/test ones never)

    def __post_init__(self):
        from peftlab.config import FieldError

        for name in ("packages", "heldout"):
            for pin in getattr(self, name):
                if not re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+", pin):
                    raise FieldError(name, f"{pin!r} is not a pinned requirement (name==version)")
        overlap = {normalize_name(p) for p in self.packages} & {normalize_name(p) for p in self.heldout}
        if overlap:
            raise FieldError("heldout", f"{sorted(overlap)} are both read and held out")
        if not 0 < self.near_dup_threshold <= 1:
            raise FieldError("near_dup_threshold", f"must be in (0, 1], got {self.near_dup_threshold}")

    def heldout_names(self) -> set[str]:
        return {normalize_name(p) for p in self.heldout}


def normalize_name(pin: str) -> str:
    """PEP 503 name of a pin (``Scikit_Learn==1.0`` -> ``scikit-learn``)."""
    return re.sub(r"[-_.]+", "-", pin.split("==")[0]).lower()


def spec_dict(spec: CorpusSpec) -> dict:
    """The spec as JSON stores it (tuples as lists): compared against a built corpus's manifest."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.__dict__.items()}


def load_corpus_spec(path: Path) -> CorpusSpec:
    from peftlab.config import load_config

    return load_config(CorpusSpec, Path(path))


# ---------------------------------------------------------------------------------------- fetch


def fetch(pin: str, spec: CorpusSpec, cache: Path, expect_sha256: Optional[str] = None) -> Path:
    """The wheel of ``pin`` in ``cache`` (downloaded once with pip, then reused)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = _cached_wheel(pin, cache)
    if found is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--python-version", spec.python_version, "--implementation", "cp",
               "--abi", f"cp{spec.python_version.replace('.', '')}", "--abi", "abi3", "--abi", "none",
               "--dest", str(cache), pin]
        for platform in spec.platforms:
            cmd[-1:-1] = ["--platform", platform]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = _cached_wheel(pin, cache)
        if done.returncode != 0 or found is None:
            tail = "\n".join(ln for ln in done.stderr.splitlines() if "is ignored" not in ln)[-600:]
            raise DataError(f"pip download {pin} failed (exit {done.returncode}): {tail}")
    if expect_sha256 and sha256_file(found) != expect_sha256:
        raise DataError(f"{found}: SHA-256 {sha256_file(found)[:12]}… is not the manifest's "
                        f"{expect_sha256[:12]}… for {pin}; the registry served another file")
    return found


def _cached_wheel(pin: str, cache: Path) -> Optional[Path]:
    name, version = pin.split("==")
    stem = re.sub(r"[-_.]+", "_", name).lower()
    for path in sorted(cache.glob("*.whl")):
        parts = path.name.split("-")
        if re.sub(r"[-_.]+", "_", parts[0]).lower() == stem and parts[1] == version:
            return path
    return None



# ------------------------------------------------------------------------------ wheels, licences


@dataclass
class Package:
    pin: str
    wheel: Optional[Path]
    licence: str  # as the metadata states it (expression, field or classifiers)
    licence_class: str  # "permissive", "copyleft" or "unknown"
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (path inside the wheel, bytes), sorted


def read_wheel(pin: str, wheel: Path) -> Package:
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(zf.namelist())
        meta = next((n for n in names if n.endswith(".dist-info/METADATA") and n.count("/") == 1), None)
        licence = licence_of(zf.read(meta).decode("utf-8", "replace")) if meta else ""
        files = [(n, zf.read(n)) for n in names if n.endswith(".py") and ".dist-info/" not in n]
    return Package(pin, wheel, licence, classify_licence(licence), files)


def licence_of(metadata: str) -> str:
    """License-Expression if given, else the License field's first line and the classifiers."""
    msg = email.parser.Parser().parsestr(metadata, headersonly=True)
    if msg.get("License-Expression"):
        return msg["License-Expression"].strip()
    parts = [c.split("::")[-1].strip() for c in msg.get_all("Classifier") or [] if c.startswith("License ::")]
    field_text = (msg.get("License") or "").strip().splitlines()
    if field_text and len(field_text[0]) <= 80:
        parts.insert(0, field_text[0].strip())
    return "; ".join(p for p in parts if p and p.lower() not in ("unknown", "other/proprietary license"))


def classify_licence(text: str) -> str:
    """"copyleft" if any part names a copyleft licence, "permissive" if some part names a
    permissive one, else "unknown". An expression "A OR B" with one permissive side is permissive."""
    low = text.lower()
    if not low.strip():
        return "unknown"
    sides = re.split(r"\s+or\s+", low)
    def side_class(side: str) -> str:
        words = set(re.findall(r"[a-z0-9.+-]+", side)) | {side.strip()}
        if any(re.search(rf"\b{re.escape(c)}", side) for c in COPYLEFT):
            return "copyleft"
        if words & set(PERMISSIVE) or any(p in side for p in PERMISSIVE if " " in p):
            return "permissive"
        return "unknown"
    classes = [side_class(s) for s in sides]
    if "permissive" in classes and len(sides) > 1:
        return "permissive"
    if "copyleft" in classes:
        return "copyleft"
    return "permissive" if all(c == "permissive" for c in classes) else "unknown"


def stdlib_files() -> Iterator[tuple[str, bytes]]:
    """(path relative to the stdlib, bytes) of this interpreter's stdlib ``*.py`` files (test
    directories included, as v1 read them), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if not skip.intersection(rel.parts) and path.is_file():
            yield rel.as_posix(), path.read_bytes()


def _text(data: bytes) -> Optional[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.strip() else None


def build(spec: CorpusSpec, cache: Path, out: Path, *, pinned: Optional[dict] = None,
          stdlib: Optional[Iterable[tuple[str, bytes]]] = None, log=print) -> dict:
    """Fetch, filter and deduplicate into ``out/files/<source>/<path>``; returns (and writes) the
    manifest. ``pinned``: an earlier manifest whose wheel SHA-256s must match. ``stdlib``: the
    stdlib's files (default: this interpreter's) — tests pass a small tree."""
    from peftlab.data.splits import file_digest, split_of_digest

    pinned = {p["pin"]: p.get("sha256") for p in (pinned or {}).get("packages", []) + (pinned or {}).get("heldout", [])}
    heldout_names = spec.heldout_names()
    near = NearDuplicates(spec.near_dup_threshold, spec.num_perm, spec.shingle)
    forbidden_functions = FunctionIndex(spec.min_function_lines)
    seen_exact: dict[str, str] = {}  # sha256 -> key of the first file with those bytes
    key = lambda: f"f{len(near.hashes):09d}"  # noqa: E731  a forbidden file's key

    # 1. forbidden: held-out packages (the held-out evaluation set) and the stdlib's valid/test files
    heldout_rows, heldout_files = [], []
    for pin in spec.heldout:
        wheel = fetch(pin, spec, cache, pinned.get(pin))
        pkg = read_wheel(pin, wheel)
        n = 0
        for path, data in pkg.files:
            text = _text(data)
            if text is None:
                continue
            k = key()
            seen_exact.setdefault(file_digest(data), f"forbidden:{pin}")
            near.add(k, near.minhash(text))
            forbidden_functions.add_file(text)
            heldout_files.append({"package": pin, "path": path, "sha256": file_digest(data)})
            n += 1
        heldout_rows.append({"pin": pin, "wheel": wheel.name, "sha256": sha256_file(wheel), "licence": pkg.licence,
                             "files": n})
    kept: list[dict] = []
    stdlib_rows = {"files_read": 0, "kept": 0, "dropped": {}}
    source_rows = []
    # the stdlib's valid/test files are what code→doc and the suite evaluate: forbidden whether or
    # not the corpus reads the stdlib's other files
    std = list(stdlib if stdlib is not None else stdlib_files())
    train = []
    for path, data in std:
        text = _text(data)
        if text is None:
            continue
        digest = file_digest(data)
        if split_of_digest(digest) != "train":
            k = key()
            seen_exact.setdefault(digest, "forbidden:stdlib-eval")
            near.add(k, near.minhash(text))
            forbidden_functions.add_file(text)
        else:
            train.append((path, data, text))
    if spec.stdlib:
        stdlib_rows["files_read"] = len(std)
        source_rows.append(("stdlib", train, stdlib_rows))
    packages = []
    for pin in spec.packages:
        wheel = fetch(pin, spec, cache, pinned.get(pin))
        pkg = read_wheel(pin, wheel)
        row = {"pin": pin, "wheel": wheel.name, "sha256": sha256_file(wheel), "licence": pkg.licence,
               "licence_class": pkg.licence_class, "files_read": len(pkg.files), "kept": 0, "dropped": {}}
        packages.append(row)
        if pkg.licence_class != "permissive":
            row["excluded"] = f"licence {pkg.licence_class}: {pkg.licence or 'none stated'}"
            continue
        files = [(p, d, _text(d)) for p, d in pkg.files]
        source_rows.append((normalize_name(pin), [f for f in files if f[2] is not None], row))
        row["dropped"]["empty or not UTF-8"] = sum(f[2] is None for f in files)

    # 2. the files pretraining reads, in order
    for source, files, row in source_rows:
        for path, data, text in files:
            why = _drop_reason(path, data, text, heldout_names, seen_exact, near, forbidden_functions, source)
            if why:
                row["dropped"][why] = row["dropped"].get(why, 0) + 1
                continue
            kept.append({"source": source, "path": path, "sha256": file_digest(data), "bytes": len(data)})
            _write(out / "files" / source / path, data)
            row["kept"] += 1
        row["dropped"] = {k: v for k, v in sorted(row["dropped"].items()) if v}
        log(f"corpus: {source}: kept {row['kept']:,} of {row.get('files_read', len(files)):,} files")
    if not kept:
        raise DataError("the corpus spec kept no file")
    manifest = {
        "corpus_version": CORPUS_VERSION, "spec": spec_dict(spec),
        "stdlib": {"python": sys.version.split()[0], **stdlib_rows} if spec.stdlib else None,
        "packages": packages, "heldout": heldout_rows,
        "files": kept, "heldout_files": heldout_files,
        "fingerprint": hashlib.sha256("\n".join(f["sha256"] for f in kept).encode()).hexdigest(),
        "bytes": sum(f["bytes"] for f in kept),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _drop_reason(path: str, data: bytes, text: str, heldout_names: set[str], seen_exact: dict,
                 near: NearDuplicates, forbidden_functions: FunctionIndex, source: str) -> Optional[str]:
    from peftlab.data.splits import file_digest

    parts = [re.sub(r"[-_.]+", "-", p).lower() for p in path.split("/")[:-1]]
    if heldout_names.intersection(parts):
        return "under a held-out package's directory"
    why = looks_generated(text)
    if why:
        return f"generated: {why}"
    digest = file_digest(data)
    if digest in seen_exact:
        return "exact copy of a held-out/evaluation file" if seen_exact[digest].startswith("forbidden") \
            else "exact duplicate"
    m = near.minhash(text)
    hits = near.matches(m)
    if hits:
        return "near-duplicate of a held-out/evaluation file" if hits[0].startswith("f") else "near-duplicate"
    if forbidden_functions.found_in(text):
        return "holds a held-out/evaluation function verbatim"
    seen_exact[digest] = f"{source}:{path}"
    near.add(f"k{len(near.hashes):09d}", m)
    return None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def default_cache() -> Path:
    return Path.home() / ".cache" / "peftlab" / "wheels"


def build_dir(spec_path: Path, out: Path, *, cache: Optional[Path] = None, pinned: Optional[Path] = None,
              log=print) -> dict:
    """``build`` into a fresh sibling directory, then swap it in for ``out`` (never half a corpus)."""
    import shutil
    import tempfile

    spec = load_corpus_spec(spec_path)
    pins = json.loads(Path(pinned).read_text()) if pinned else None
    out = Path(out)
    if out.exists() and not (out / "manifest.json").is_file() and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not a corpus peftlab built (no manifest.json); refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        manifest = build(spec, Path(cache or default_cache()), tmp, pinned=pins, log=log)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def corpus_files(out: Path) -> list[Path]:
    """The kept files of a built corpus, in the manifest's (training) order."""
    manifest = read_manifest(out)
    return [out / "files" / f["source"] / f["path"] for f in manifest["files"]]


def read_manifest(out: Path) -> dict:
    path = Path(out) / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"{out}: no corpus manifest.json (build it with `peftlab corpus SPEC --out {out}`)")
    return json.loads(path.read_text())
