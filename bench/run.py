"""`make bench` entry point: python bench/run.py
{etl|training|scoring|quality|quality-gpu|ceiling|profile|scorer|incremental|all|report}.

Each benchmark prints its table and writes bench/results/<name>.json with the machine and the command;
``scoring`` takes options for a smaller run (``python bench/run.py scoring --help``), ``quality`` takes
``--dataset movielens|demo``, ``quality-gpu`` prepares the folder for a GPU machine and ingests what it sends
back (``python bench/run.py quality-gpu --help``). ``report`` regenerates docs/benchmarks.md from
bench/results/*.json (no Spark, seconds).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str]) -> int:
    what, rest = (argv[0], argv[1:]) if argv else ("all", [])
    if what == "scorer":  # no Spark: runs on a bare GPU machine too (options: bench/run.py scorer --help)
        from bench import scorer_bench

        scorer_bench.run(rest)
        return 0
    if what == "quality-gpu":  # prepares here (Spark), trains there (no Spark), evaluates here
        from bench import quality_gpu

        return quality_gpu.run(rest)
    if what == "incremental":  # a full and an incremental night on the same tables (options: none)
        from bench import incremental_bench

        if rest:
            print("incremental takes no options", file=sys.stderr)
            return 2
        incremental_bench.run()
        return 0
    if what not in ("etl", "training", "scoring", "quality", "ceiling", "profile", "all", "report"):
        print(__doc__)
        return 2
    dataset = "movielens"
    if what == "quality" and rest:
        if len(rest) != 2 or rest[0] != "--dataset" or rest[1] not in ("movielens", "demo"):
            print("quality takes only --dataset movielens|demo", file=sys.stderr)
            return 2
        dataset, rest = rest[1], []
    if rest and what != "scoring":
        print(f"{what} takes no options; only scoring does", file=sys.stderr)
        return 2
    if what == "report":
        from bench import report

        print(f"wrote {report.write()}")
        return 0
    if what in ("etl", "all"):
        from bench import etl_bench

        etl_bench.run()
    if what in ("scoring", "all"):
        from bench import scoring_bench

        scoring_bench.run(rest)
    if what in ("training", "all"):
        from bench import training_bench

        training_bench.run()
    if what == "quality":
        from bench import quality_bench

        quality_bench.run(dataset=dataset)
    if what == "ceiling":  # after `quality`: it reads that run's tables
        from bench import ndcg_ceiling

        ndcg_ceiling.run()
    if what == "profile":  # on the scoring bench's pairs and model (prepared when missing)
        from bench import inference_profile

        inference_profile.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
