"""Every results file records the versions it ran with: ``provenance.versions()`` names each library
that can decide a result (as installed, from its metadata: nothing is imported for it)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from peftlab import provenance


def test_versions_name_every_library_that_decides_a_result():
    v = provenance.versions()
    for name in ("torch", "transformers", "accelerate", "tokenizers", "safetensors", "sacrebleu", "rouge-score",
                 "numpy", "rapidfuzz", "peft"):  # peft: the test extra installs it
        assert v[name] == metadata.version(name), name
    assert v["python"] and v["peftlab"]


def test_a_library_not_installed_is_left_out(monkeypatch):
    monkeypatch.setattr(provenance, "DECIDING", ("torch", "no-such-library"))
    assert "no-such-library" not in provenance.versions() and "torch" in provenance.versions()


def test_versions_import_none_of_the_libraries():
    code = "import sys; from peftlab.provenance import versions; versions(); print(sorted(m for m in ('torch', 'peft', 'bitsandbytes', 'transformers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
