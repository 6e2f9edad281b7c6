#!/usr/bin/env python
"""Update the latest release: the same job as `intent-ci update`.

Runs unchanged on one process or many, because Accelerate reads the launcher's environment:

    python scripts/update_release.py --data fixes.csv
    torchrun --nproc_per_node 2 scripts/update_release.py --data fixes.csv

With the default `train.update_mode: head` every rank fits the same head on the gathered
embeddings; with `lora` every rank trains on its shard. Only the main process writes the
registry.
"""

import sys

from intent_ci.cli import main

if __name__ == "__main__":
    sys.exit(main(["update", *sys.argv[1:]]))
