"""A peftlab command's terminal holds peftlab's own progress and results: other libraries' INFO
lines and known empty warnings are kept off it, their real warnings are not."""

import logging
import os
import subprocess
import sys
import textwrap

from peftlab.lab.env import shown_on_terminal


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_only_peftlab_lines_and_other_libraries_real_warnings_are_shown():
    assert shown_on_terminal(_record("peftlab.lab.run", logging.INFO, "truncated 3 of 5 sources"))
    assert shown_on_terminal(_record("__main__", logging.INFO, "[1/4] code2doc/lora/seed0"))  # a child process
    assert not shown_on_terminal(_record("matplotlib.font_manager", logging.INFO, "generated new fontManager"))
    assert not shown_on_terminal(_record("absl", logging.INFO, "Using default tokenizer."))
    assert shown_on_terminal(_record("transformers.modeling_utils", logging.WARNING, "Some weights were not used"))
    assert not shown_on_terminal(_record("bitsandbytes.backends.cpu.ops", logging.WARNING,
                                         "Failed to load CPU gemm_4bit_forward from kernels-community: ..."))
    assert shown_on_terminal(_record("bitsandbytes.nn.modules", logging.WARNING, "something else went wrong"))


def test_a_command_process_prints_no_cache_notice_nor_imports_peft_for_a_version(tmp_path):
    """In a fresh process, as a command runs: matplotlib building its font cache (a first run) says
    nothing; the speed bench's versions come from metadata, not from importing peft (and with it
    bitsandbytes, whose import logs a kernel notice)."""
    script = textwrap.dedent("""
        import logging, sys
        from pathlib import Path
        from peftlab.lab.env import configure_logging
        configure_logging()
        from peftlab.lab.compare import plot
        plot([{"method": "m", "trainable_params": 3, "bleu": 1.0}], Path(sys.argv[1]) / "r.png")
        from peftlab.lab.speed.machine import versions
        assert versions()["peft"], "peft's version from its metadata"
        logging.getLogger("peftlab.x").info("own line")
        print(sorted(m for m in ("peft", "bitsandbytes") if m in sys.modules))
    """)
    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "mpl"))  # an empty cache: matplotlib builds it
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert done.stderr == "own line\n"
    assert (tmp_path / "r.png").stat().st_size > 0 and any((tmp_path / "mpl").iterdir())


def test_loading_a_model_draws_no_transformers_bar(capfd):
    from peftlab.models.loading import load_model
    from peftlab.schema import ModelSpec

    capfd.readouterr()
    load_model(ModelSpec(name="mini-t5"))
    assert "Loading weights" not in capfd.readouterr().err
