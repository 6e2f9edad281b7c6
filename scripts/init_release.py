#!/usr/bin/env python
"""Train the first release of a registry: the same job as `intent-ci init`.

python scripts/init_release.py --data data/base --backbone packaged:all-MiniLM-L6-v2
torchrun --nproc_per_node 2 scripts/init_release.py --data data/base
"""

import sys

from intent_ci.cli import main

if __name__ == "__main__":
    sys.exit(main(["init", *sys.argv[1:]]))
