"""Safety: peftlab stores tensors as safetensors and state as JSON; it never unpickles a file."""

import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "peftlab"


@pytest.mark.parametrize("pattern", [r"import pickle|pickle\.load", r"torch\.load\(", r"\bdill\b", r"\bjoblib\b"])
def test_no_unpickling_in_the_package(pattern):
    offenders = [f"{p.relative_to(PKG)}:{i}" for p in PKG.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]
    assert not offenders, f"{pattern} used in {offenders}"


def test_checkpoint_files_are_safetensors_and_json(tmp_path):
    import torch

    from peftlab.train.checkpoint import local_state, save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path, 1, *local_state(model, opt), {"epoch": 0, "index": 1, "elapsed": 0.0, "tokens": 0})
    assert sorted(p.name for p in path.iterdir()) == ["optimizer.safetensors", "state.json", "trainable.safetensors"]
