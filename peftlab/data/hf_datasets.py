"""Datasets of the HF ``datasets`` ecosystem: a Hub id or local Parquet / Arrow / JSON(L) / CSV / TSV
files (or a directory ``save_to_disk`` wrote), read into plain rows, split as peftlab splits.

``datasets`` is an optional dependency (``pip install 'peftlab[datasets]'``), imported only here
and only when such a task reads its data. A Hub id is loaded by ``datasets.load_dataset`` (from
its cache when ``HF_DATASETS_OFFLINE=1``); a local file by the packaged builder its ending names.

peftlab's ``train`` / ``valid`` / ``test`` read the dataset's splits of those names (``valid`` also
``validation``, ``dev``, ``val``; ``DatasetSource.splits`` names others). A peftlab split the dataset
lacks is carved from its train split by each row's content hash (``peftlab.data.splits``: identical
rows land together, the same on every machine), taking ``percent`` of it; train keeps the rest.
A dataset with a single split (a local file) is therefore split 90 / 5 / 5 by default.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from peftlab.errors import DataError

BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".csv": "csv",
            ".tsv": "csv"}
SPLIT_NAMES = {"train": ("train",), "valid": ("validation", "valid", "dev", "val"), "test": ("test",)}


@dataclass(frozen=True)
class DatasetSource:
    path: str  # a Hub id, a local data file, or a directory of them (or of save_to_disk)
    subset: Optional[str] = None  # the Hub dataset's configuration (load_dataset's name)
    revision: Optional[str] = None  # a Hub commit, branch or tag
    splits: tuple[tuple[str, str], ...] = ()  # peftlab split -> the dataset's split, where names differ
    percent: tuple[int, int, int] = (90, 5, 5)  # train / valid / test, for splits carved by hash

    def local(self) -> Optional[Path]:
        path = Path(self.path).expanduser()
        return path if path.exists() else None


def rows(source: DatasetSource, split: str) -> tuple[list[tuple[int, dict]], dict]:
    """``(row index, record)`` of peftlab ``split`` and the dataset's column features; DataError for a
    dataset that cannot be read or a split it cannot give."""
    parts = _load(source)
    names = split_names(source, parts)
    train = names["train"]
    if names[split] is not None and not (split == "train" and any(v is None for v in names.values())):
        name = names[split]
        if not len(parts[name]):
            raise DataError(f"{source.path}: its {name!r} split is empty")
        return list(enumerate(parts[name].to_list())), dict(parts[name].features)
    carved = [s for s in ("valid", "test") if names[s] is None]
    share = dict(zip(("train", "valid", "test"), source.percent))
    percent = {"train": 100 - sum(share[s] for s in carved), **{s: share[s] if s in carved else 0
                                                                 for s in ("valid", "test")}}
    from peftlab.data.splits import split_of_digest

    out = [(i, r) for i, r in enumerate(parts[train].to_list()) if split_of_digest(_digest(r), percent) == split]
    if not out:
        raise DataError(f"{source.path}: no row of its {train!r} split falls into {split} ({percent[split]}% by "
                        f"content hash); give the dataset a {split} split or change split_percent")
    return out, dict(parts[train].features)


def split_names(source: DatasetSource, parts: dict) -> dict[str, Optional[str]]:
    """peftlab split -> the dataset's split (None: carved from train)."""
    given = dict(source.splits)
    for name in given.values():
        if name not in parts:
            raise DataError(f"{source.path}: no split {name!r} (it has: {', '.join(parts)})")
    out: dict[str, Optional[str]] = {}
    for split, names in SPLIT_NAMES.items():  # a split named for another peftlab split is not read twice
        out[split] = given.get(split) or next((n for n in names if n in parts and n not in given.values()), None)
    if out["train"] is None:
        if len(parts) != 1:
            raise DataError(f"{source.path}: no train split (it has: {', '.join(parts)}); name one with "
                            f"splits: {{train: NAME}}")
        out["train"] = next(iter(parts))
    return out


def files(source: DatasetSource) -> list[str]:
    """The local data files the dataset reads (a run fingerprints them); none for a Hub id."""
    path = source.local()
    if path is None:
        return []
    if path.is_file():
        return [str(path.resolve())]
    return [str(p.resolve()) for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")]


def _digest(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str, ensure_ascii=False).encode()).hexdigest()


@functools.lru_cache(maxsize=8)
def _load(source: DatasetSource) -> dict:
    """The dataset's splits (name -> ``datasets.Dataset``), loaded once per process."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{source.path}: reading it needs the datasets package: "
                        f"pip install 'peftlab[datasets]'") from None
    datasets.disable_progress_bars()
    path = source.local()
    try:
        if path is not None and path.is_dir() and ((path / "dataset_dict.json").is_file()
                                                  or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
        elif path is not None and path.is_file():
            builder = BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{path}: not a data file peftlab reads (endings: {', '.join(BUILDERS)})")
            extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            loaded = datasets.load_dataset(builder, data_files={"train": str(path)}, **extra)
        else:
            loaded = datasets.load_dataset(str(path) if path is not None else source.path, source.subset,
                                           revision=source.revision)
    except DataError:
        raise
    except (datasets.exceptions.DatasetsError, FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        raise DataError(f"{source.path}: cannot load the dataset ({type(e).__name__}: {e})") from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    if not len(loaded):
        raise DataError(f"{source.path}: the dataset has no splits")
    return dict(loaded)
