"""``python -m peftlab``: the ``peftlab`` command (``peftlab.lab.cli``), for environments without the script."""

import sys

from peftlab.lab.cli import main

sys.exit(main())
