"""The speed benchmark, as a script: ``python benchmarks/speed.py SPEC.yaml [--dry-run] [...]``.

Exactly ``peftlab speed SPEC.yaml ...`` (``peftlab.speed``); the specs are in ``benchmarks/speed/``.
"""

import sys

from peftlab.speed import main

if __name__ == "__main__":
    sys.exit(main())
