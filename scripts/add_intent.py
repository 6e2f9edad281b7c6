#!/usr/bin/env python
"""Add intents to the latest release: the same job as `intent-ci add-intent`.

Runs unchanged on one process or many, because Accelerate reads the launcher's environment:

    python scripts/add_intent.py --data data/new/refund_status.txt
    accelerate launch --cpu scripts/add_intent.py --data data/new/refund_status.txt
    torchrun --nproc_per_node 2 scripts/add_intent.py --data data/new/refund_status.txt

Every rank trains on its shard; only the main process writes the registry.
"""

import sys

from intent_ci.cli import main

if __name__ == "__main__":
    sys.exit(main(["add-intent", *sys.argv[1:]]))
