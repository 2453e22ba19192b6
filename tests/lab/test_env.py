"""Precision chooses itself: the one rule in ``peftlab.device.resolve_precision`` for every
device, the capability probes behind it (mocked: each kind of CPU/GPU this project has seen or
expects), the one warning for a forced slow choice, and generation following the same rule."""

import logging
from pathlib import Path

import pytest
import torch

from peftlab import device as dev, provenance
from peftlab.lab import env
from peftlab.errors import ConfigError


@pytest.fixture
def machine(monkeypatch):
    """``machine(cpu_bf16=..., cuda_bf16=...)``: pretend the probes found this; warnings start afresh."""
    monkeypatch.setattr(dev, "_warned", set())

    def pretend(cpu_bf16=False, cuda_bf16=False):
        monkeypatch.setattr(dev, "native_bf16_cpu", lambda: cpu_bf16)
        monkeypatch.setattr(dev, "cuda_native_bf16", lambda index=0: cuda_bf16)
        monkeypatch.setattr(dev, "_gpu_name", lambda index=0: "Tesla T4")

    return pretend


@pytest.mark.parametrize("device, cpu_bf16, cuda_bf16, requested, expected", [
    ("cpu", True, False, "auto", "bf16"),    # AVX512-BF16 / AMX
    ("cpu", False, False, "auto", "no"),     # an AVX2-only EPYC: fp32
    ("cuda", False, True, "auto", "bf16"),   # A100 / H100
    ("cuda", False, False, "auto", "fp16"),  # T4 / V100: fp16 with loss scaling
    ("cuda:1", False, False, "auto", "fp16"),
    (torch.device("cpu"), True, False, "auto", "bf16"),
    ("cpu", False, False, "bf16", "bf16"),   # explicit: still runs (with a warning)
    ("cpu", True, False, "no", "no"),
    ("cpu", True, False, "bf16", "bf16"),
    ("cuda", True, True, "fp16", "fp16"),
    ("cuda", False, False, "bf16", "bf16"),
    ("cuda", False, True, "no", "no"),
])
def test_precision_resolution(machine, device, cpu_bf16, cuda_bf16, requested, expected):
    machine(cpu_bf16=cpu_bf16, cuda_bf16=cuda_bf16)
    assert dev.resolve_precision(requested, device) == expected


def test_fp16_on_cpu_is_refused_for_training_and_falls_back_for_generation(machine):
    machine(cpu_bf16=False)
    with pytest.raises(ConfigError, match="fp16 autocast needs a GPU"):
        dev.resolve_precision("fp16", "cpu")
    assert dev.resolve_precision("fp16", "cpu", training=False) == "no"  # a GPU run re-scored on a CPU
    machine(cpu_bf16=True)
    assert dev.resolve_precision("fp16", "cpu", training=False) == "bf16"


def test_unknown_precision_is_one_clear_error():
    with pytest.raises(ConfigError, match="train.mixed_precision: 'fp8' is not one of auto, bf16, fp16, no"):
        dev.resolve_precision("fp8", "cpu")


def test_forced_slow_bf16_warns_once_saying_why_and_what_to_set(machine, caplog):
    machine(cpu_bf16=False)
    with caplog.at_level(logging.WARNING, logger="peftlab.device"):
        for _ in range(3):
            assert dev.resolve_precision("bf16", "cpu") == "bf16"
        dev.resolve_precision("auto", "cpu")
    (record,) = caplog.records
    msg = record.getMessage()
    assert "without native bf16" in msg and "neither AVX512-BF16 nor AMX" in msg and "slower" in msg
    assert "train.mixed_precision: auto" in msg and "\n" not in msg


@pytest.mark.parametrize("requested, cpu_bf16", [("auto", False), ("auto", True), ("bf16", True), ("no", False)])
def test_no_warning_for_a_fast_choice(machine, caplog, requested, cpu_bf16):
    machine(cpu_bf16=cpu_bf16)
    with caplog.at_level(logging.WARNING, logger="peftlab.device"):
        dev.resolve_precision(requested, "cpu")
    assert not caplog.records


def test_forced_bf16_on_an_old_gpu_warns_once(machine, caplog):
    machine(cuda_bf16=False)
    with caplog.at_level(logging.WARNING, logger="peftlab.device"):
        dev.resolve_precision("bf16", "cuda")
        dev.resolve_precision("bf16", "cuda")
    (record,) = caplog.records
    assert "Tesla T4" in record.getMessage() and "auto" in record.getMessage()


# what torch.cpu.get_capabilities() says on each kind of CPU (the keys that matter)
CPUS = {
    "AVX2-only EPYC (Zen 2/3)": ({"architecture": "x86_64", "avx2": True, "avx512_f": False, "avx512_bf16": False,
                                  "amx_bf16": False}, "AVX2", False, "AVX2"),
    "AVX512 without BF16 (Skylake-SP)": ({"architecture": "x86_64", "avx2": True, "avx512_f": True,
                                          "avx512_bf16": False, "amx_bf16": False}, "AVX512", False, "AVX512"),
    "AVX512-BF16 EPYC (Zen 4)": ({"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bf16": True,
                                  "amx_bf16": False}, "AVX512", True, "AVX512 + AVX512-BF16"),
    "AMX Xeon (Sapphire Rapids)": ({"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True, "amx_bf16": True,
                                    "amx_tile": True}, "AVX512", True, "AVX512 + AVX512-BF16 + AMX-BF16"),
    "ARM with BF16 (Graviton3)": ({"architecture": "aarch64", "neon": True, "bf16": True, "sve": True},
                                  "SVE256", True, "SVE256 + BF16"),
    "ARM without BF16 (Graviton2)": ({"architecture": "aarch64", "neon": True, "bf16": False}, "DEFAULT", False,
                                     "DEFAULT"),
}


@pytest.mark.parametrize("name", list(CPUS))
def test_native_bf16_probe(monkeypatch, name):
    caps, isa, native, described = CPUS[name]
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: isa)
    assert dev.native_bf16_cpu() is native
    assert dev.cpu_capability() == described


def test_probe_without_get_capabilities_uses_torchs_older_probes(monkeypatch):
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    for fn, value in [("_is_avx2_supported", True), ("_is_avx512_supported", True),
                      ("_is_avx512_bf16_supported", False), ("_is_amx_tile_supported", True)]:
        monkeypatch.setattr(torch.cpu, fn, lambda value=value: value)
    assert dev.native_bf16_cpu() is True  # AMX


def test_hardware_record_and_report_on_this_machine():
    hw = dev.hardware()
    assert set(hw) == {"device", "cpu_capability", "native_bf16"} and isinstance(hw["native_bf16"], bool)
    rep = env.report()
    assert rep["auto_precision"] in ("bf16", "fp16", "no") and rep["torch"] == torch.__version__
    assert rep["auto_precision"] == dev.resolve_precision("auto", rep["device"])


def test_runs_record_the_peftlab_commit_only_of_a_checkout(tmp_path, monkeypatch):
    """A checkout reports its HEAD (``-dirty`` with changed tracked files); an installed copy, even in
    a virtual environment inside some other git repository, reports None rather than that repository's."""
    import subprocess

    import peftlab

    root = Path(peftlab.__file__).resolve().parents[1]
    commit = provenance.peftlab_commit()
    if (root / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        assert commit is not None and commit.removesuffix("-dirty") == head
    assert provenance.versions()["peftlab_commit"] == commit
    outer = tmp_path / "project"  # some user's repository, holding a venv with peftlab installed
    installed = outer / "venv" / "lib" / "site-packages" / "peftlab"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    monkeypatch.setattr(peftlab, "__file__", str(installed / "__init__.py"))
    provenance.peftlab_commit.cache_clear()  # asked once a process: forget this checkout's answer
    try:
        assert provenance.peftlab_commit() is None
    finally:
        provenance.peftlab_commit.cache_clear()


def test_generation_follows_the_same_rule(monkeypatch, machine, tiny_t5):
    from peftlab.evaluate.generate import generate_texts

    class Tok:  # just enough tokenizer for generate_texts
        pad_token_id, eos_token_id = 0, 1

        def __call__(self, texts, **kw):
            return {"input_ids": [[5 + len(t) % 50, 7, 9] for t in texts]}

        def batch_decode(self, ids, skip_special_tokens=True):
            return [" ".join(map(str, row.tolist())) for row in ids]

    machine(cpu_bf16=False)
    seen = []
    resolve = dev.resolve_precision
    monkeypatch.setattr(dev, "resolve_precision", lambda *a, **k: seen.append((a, k)) or resolve(*a, **k))
    out = generate_texts(tiny_t5(), Tok(), ["a", "bb"], max_source_length=8, max_new_tokens=3, mixed_precision="fp16")
    assert len(out) == 2
    assert seen == [(("fp16", torch.device("cpu")), {"training": False})]


def test_peak_rss_of_a_subprocess_is_its_own():
    """Linux carries a parent's resident set at fork into the child's ru_maxrss across exec, so a
    fresh worker of a 3 GiB process reported 3 GiB (every implementation of a speed case had the
    same "peak"). peak_rss_bytes reads VmHWM: the child's own."""
    import subprocess
    import sys

    from peftlab.device import peak_rss_bytes

    ballast = bytearray(600 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page: 600 MiB resident here
    assert peak_rss_bytes() >= 600 * 2**20
    code = "from peftlab.device import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    del ballast
    assert child < 300 * 2**20, child  # the interpreter and peftlab's light imports, not the parent's 600 MiB
