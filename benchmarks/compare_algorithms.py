"""VinePPO against its baselines at equal wall-clock, from one shared SFT model (see vineppo.bench.compare).

    python benchmarks/compare_algorithms.py [--methods vineppo ppo grpo rloo restem dpo_plus] [--k 1 3]
                                            [--budget 120] [--eval-seconds 10] [--out DIR]

The same as `vineppo bench compare`.
"""

import sys

from vineppo.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "compare", *sys.argv[1:]]))
