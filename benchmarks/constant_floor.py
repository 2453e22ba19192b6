"""The score of a constant output on the seed-000 test sample: the floor every table is read against.

    python benchmarks/constant_floor.py [CONFIG]   (default configs/seed000/lora_r32_align.yaml)
README quotes "Return a list of the ." -> CodeXGLUE BLEU 11.6, ROUGE-L 18.6, BLEU 0.70.
"""

import sys
from pathlib import Path

from peftlab.config import load_config
from peftlab.evaluate.metrics import text_metrics
from peftlab.run import load_examples, prompts
from peftlab.schema import RunConfig

cfg = load_config(RunConfig, Path(sys.argv[1] if len(sys.argv) > 1 else "configs/seed000/lora_r32_align.yaml"))
_, refs = prompts(cfg.data, load_examples(cfg.data, cfg.data.test_split, cfg.eval.max_examples))
for const in ("Return a .", "Return the .", "Return a list of the ."):
    m = text_metrics([const] * len(refs), refs)
    print(f"{const!r:28} BLEU {m['bleu']:.2f}  CodeXGLUE BLEU {m['codexglue_bleu']:.2f}  ROUGE-L {m['rouge_l']:.2f}")
