"""The speed benchmark, as a script: ``python benchmarks/speed.py SPEC.yaml [--dry-run] [...]``.

Exactly ``peftlab speed SPEC.yaml ...`` (``peftlab.lab.speed``); the specs are in ``benchmarks/speed/``.
"""

import sys

from peftlab.lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["speed", *sys.argv[1:]]))
