"""`make bench` entry point: python bench/run.py {etl|training|scoring|quality|ceiling|profile|scorer|all}.

Each benchmark prints its table and writes bench/results/<name>.json. They run on this machine's CPUs
(2 cores here); numbers in the README come from these commands.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "all"
    if what == "scorer":  # no Spark: runs on a bare GPU machine too (options: bench/run.py scorer --help)
        from bench import scorer_bench

        scorer_bench.run(argv[1:])
        return 0
    if what not in ("etl", "training", "scoring", "quality", "ceiling", "profile", "all"):
        print(__doc__)
        return 2
    if what in ("etl", "all"):
        from bench import etl_bench

        etl_bench.run()
    if what in ("scoring", "all"):
        from bench import scoring_bench

        scoring_bench.run()
    if what in ("training", "all"):
        from bench import training_bench

        training_bench.run()
    if what == "quality":
        from bench import quality_bench

        quality_bench.run()
    if what == "ceiling":  # after `quality`: it reads that run's tables
        from bench import ndcg_ceiling

        ndcg_ceiling.run()
    if what == "profile":  # on the scoring bench's pairs and model (prepared when missing)
        from bench import inference_profile

        inference_profile.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
