"""The ``adrec`` console command; ``jobs/*.py`` call :func:`main` with their job name.

Every command takes ``--conf FILE`` (repeatable; later wins; a packaged config by name: ``--conf cluster``),
``--set key=value`` (repeatable) and ``--log-level``, before or after the command's name (both are joined, the
ones before first). ``adrec config`` prints the configuration they make. The config is loaded and checked before
any Spark work starts. User-facing errors print one line and exit 2; a
job stopped by SIGTERM or Ctrl-C puts back what it wrote and exits 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from adrec_spark.config import AppConfig, load_config
from adrec_spark.errors import AdrecError, InputDataError, JobTerminated
from adrec_spark.logs import configure_logging
from adrec_spark.termination import terminate_as_error

log = logging.getLogger("adrec_spark.cli")


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from e


def _common(*, top_level: bool = False) -> argparse.ArgumentParser:
    """``--conf``/``--set``/``--log-level``, accepted before and after the subcommand.

    argparse lets a subparser's defaults overwrite the values given before the subcommand, so the top-level
    copies keep their own destinations (``*_top``) and :func:`parse_args` joins the two, top level first.
    """
    suffix = "_top" if top_level else ""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--conf", action="append", default=[], metavar="FILE", dest="conf" + suffix,
                   help="YAML config file(s) over the embedded defaults (conf/local.yaml), or the name of a "
                        "packaged one (demo, cluster, cluster-gpu, movielens); repeatable, later wins")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides" + suffix,
                   help="override one setting, e.g. --set train.epochs=3; repeatable, later wins")
    p.add_argument("--log-level", default=None, dest="log_level" + suffix, metavar="LEVEL",
                   help="logging level (default: $ADREC_LOG_LEVEL or INFO)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; options given before and after the subcommand are joined (top level first)."""
    args = parser.parse_args(argv)
    args.conf = [*args.conf_top, *args.conf]
    args.overrides = [*args.overrides_top, *args.overrides]
    args.log_level = args.log_level or args.log_level_top or os.environ.get("ADREC_LOG_LEVEL", "INFO")
    del args.conf_top, args.overrides_top, args.log_level_top
    return args


def config_files(args: argparse.Namespace) -> list[str]:
    """Config files in merge order: ``$ADREC_CONF`` (comma-separated), then ``--conf``.

    ``adrec demo`` with no file given uses the packaged ``demo`` config (the embedded default sized for a
    laptop), found inside the installed package, not relative to the working directory.
    """
    files = [f for f in os.environ.get("ADREC_CONF", "").split(",") if f] + list(args.conf)
    if args.command == "demo" and not files:
        files = ["demo"]
    return files


def load(args: argparse.Namespace) -> AppConfig:
    return load_config(config_files(args), args.overrides)


def _session(cfg: AppConfig, job: str):
    from adrec_spark.session import build_spark

    return build_spark(cfg, app_name=f"adrec-{job}")


# --- commands ---------------------------------------------------------------------------------------------


def cmd_config(args: argparse.Namespace, cfg: AppConfig) -> int:
    """Print the effective configuration as YAML, each setting with where it came from."""
    from adrec_spark.config import config_yaml, load_config_with_sources

    _, sources = load_config_with_sources(config_files(args), args.overrides)
    print(config_yaml(cfg, sources), end="")
    return 0


def cmd_generate(args: argparse.Namespace, cfg: AppConfig) -> int:
    from adrec_spark.samples.generator import GeneratorSpec, generate

    spec = GeneratorSpec(n_users=args.users, n_ads=args.ads, n_events=args.events, n_days=args.days,
                         start=args.start, seed=args.seed, fmt=args.format,
                         bad_rows_per_day=0 if args.no_bad_rows else GeneratorSpec.bad_rows_per_day)
    out = args.out or os.path.dirname(cfg.storage.raw_events.rstrip("/")) or "."
    counts = generate(spec, out)
    print(f"generated {counts['events'] + counts['bad_events']} events "
          f"({counts['bad_events']} deliberately bad) and {counts['ads']} ads under {out}")
    return 0


def cmd_movielens(args: argparse.Namespace, cfg: AppConfig) -> int:
    from adrec_spark.samples.movielens import default_source, write_landing

    out = args.out or os.path.dirname(cfg.storage.raw_events.rstrip("/")) or "."
    summary = write_landing(args.src or default_source(), out)
    print(f"MovieLens landing files under {out}: {summary}")
    print(f"next: adrec etl --start {summary['first_day']} --end {summary['last_day']} --conf conf/movielens.yaml")
    return 0


def cmd_etl(args: argparse.Namespace, cfg: AppConfig) -> int:
    from adrec_spark.etl.pipeline import run_etl

    start, end = _date_range(args)
    result = run_etl(_session(cfg, "etl"), cfg, start, end)
    print(f"ETL {result.dates[0]}..{result.dates[-1]}: input {result.input_rows} = clean {result.clean_rows}"
          f" + rejected {result.rejected_rows} + duplicates {result.duplicate_rows}; "
          f"{result.training_examples} training examples; {result.users_profiled} user profiles")
    return 0


def _date_range(args: argparse.Namespace) -> tuple[dt.date, dt.date | None]:
    if args.date and (args.start or args.end):
        raise AdrecError("give either --date or --start/--end, not both")
    if args.date:
        return args.date, None
    if not args.start:
        raise AdrecError("give --date YYYY-MM-DD (nightly) or --start/--end (backfill)")
    return args.start, args.end or args.start


Command = Callable[[argparse.Namespace, AppConfig], int]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    common = _common()
    parser = argparse.ArgumentParser(prog="adrec", description=__doc__, parents=[_common(top_level=True)])
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, Command] = {}

    p = sub.add_parser("config", parents=[common], help="print the effective configuration as YAML (what a job "
                                                         "with these --conf/--set would use), with each value's origin")
    commands["config"] = cmd_config

    p = sub.add_parser("generate", parents=[common], help="write sample ad logs to the landing area")
    p.add_argument("--out", help="output folder (default: the parent of storage.raw_events)")
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--ads", type=int, default=300)
    p.add_argument("--events", type=int, default=40_000)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--start", type=_date, default=dt.date(2024, 1, 1))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["json", "parquet", "csv"], default="json")
    p.add_argument("--no-bad-rows", action="store_true", help="leave out the deliberately bad rows")
    commands["generate"] = cmd_generate

    p = sub.add_parser("movielens", parents=[common], help="MovieLens-100k as landing files")
    p.add_argument("--src", help="folder with ratings.parquet/items.parquet or u.data/u.item "
                                 "(default: ../shared/data/movielens-100k)")
    p.add_argument("--out", help="output folder (default: the parent of storage.raw_events)")
    commands["movielens"] = cmd_movielens

    p = sub.add_parser("etl", parents=[common], help="landing files -> Delta tables for a date or a range")
    p.add_argument("--date", type=_date, help="the landing date to process (nightly)")
    p.add_argument("--start", type=_date, help="first date of a backfill")
    p.add_argument("--end", type=_date, help="last date of a backfill")
    commands["etl"] = cmd_etl

    _register_later_commands(sub, common, commands)
    return parser, commands


def cmd_train(args: argparse.Namespace, cfg: AppConfig) -> int:
    from adrec_spark.training.pipeline import run_training

    result = run_training(_session(cfg, "train"), cfg, init_from=args.init_from, resume=args.resume)
    pre = "n/a" if result.pretrained_test_auc is None else f"{result.pretrained_test_auc:.4f}"
    print(f"trained {cfg.mlflow.model_name} v{result.model_version} (run {result.run_id}) on training_examples "
          f"v{result.table_version} {result.rows}: test AUC {result.test_auc:.4f} (pretrained, before fine-tuning: "
          f"{pre}); {'PROMOTED to ' + cfg.train.champion_alias if result.promoted else 'not promoted'}: "
          f"{result.decision}")
    return 0


def cmd_score(args: argparse.Namespace, cfg: AppConfig) -> int:
    from adrec_spark.scoring.pipeline import run_scoring

    r = run_scoring(_session(cfg, "score"), cfg, args.date, full=args.full)
    print(f"scored {r.score_date} with {r.model_name} v{r.model_version}: {r.users} users {r.users_by_strategy}, "
          f"{r.eligible_ads} eligible ads, {r.pairs_scored} pairs ({r.pairs_scored / max(r.all_pairs, 1):.1%} of "
          f"all; {r.pairs_saved} took the score of an identical input), {r.recommendations} recommendations in "
          f"{r.seconds:.0f}s ({r.pairs_per_second:.0f} pairs/s)\n{r.lineage()}")
    return 0


def cmd_evaluate(args: argparse.Namespace, cfg: AppConfig) -> int:
    from adrec_spark.evaluation.pipeline import run_evaluation

    spark = _session(cfg, "evaluate")
    r = run_evaluation(spark, cfg, args.date)
    print(headline(r.table, r.beyond, r.comparison, r.info))
    print("\n" + recommendation_samples(spark, cfg, dt.date.fromisoformat(r.eval_date)))
    print(f"\nreport: {r.report_path.resolve()}")
    return 0


def _flagged(frame, cols, info):
    """``frame[cols]`` as text, a flagged value followed by its flags in brackets."""
    def cell(method, col, v):
        text = "-" if v != v else f"{v:.4f}"  # NaN != NaN
        flag = getattr((info or {}).get((str(method), str(col))), "flag", "")
        return f"{text} [{flag}]" if flag else text

    out = frame[cols].astype(object).copy()
    for method in frame.index:
        for col in cols:
            out.loc[method, col] = cell(method, col, float(frame.loc[method, col]))
    return out.to_string()


def headline(table, beyond, comparison=None, info=None) -> str:
    """The method-by-metric table a person reads first (then beyond-accuracy, then the paired comparison).
    With ``info`` (the evaluation's per-metric n, interval and flags) a flagged value says so next to it."""
    cols = [c for c in ("auc", "log_loss", "ndcg@5", "ndcg@10", "hit_rate@10", "mrr", "map@10") if c in table.columns]
    text = _flagged(table, cols, info)
    if beyond is not None:
        bcols = [c for c in ("coverage", "ild_category", "ild_embedding", "personalization", "novelty",
                             "gini_advertiser") if c in beyond.columns]
        text += "\n\n" + _flagged(beyond, bcols, info)
    if info and any(getattr(i, "flag", "") for i in info.values()):
        text += ("\n\nflags: degenerate = fixed by construction (e.g. hit rate@K when every user has <= K "
                 "candidates); empty_input = scored on empty inputs; small_n = too few users or positives to tell "
                 "methods apart; undefined = not defined on this data. Intervals: eval_metrics and the report.")
    if comparison is not None and not comparison.empty:
        diff = next(c for c in comparison.columns if c.startswith("ndcg_diff@"))
        k = diff.partition("@")[2]
        lines = [f"{name}: NDCG@{k} {row[diff]:+.4f} (95% interval {row[f'ndcg_diff_ci_low@{k}']:+.4f} .. "
                 f"{row[f'ndcg_diff_ci_high@{k}']:+.4f}; users better {int(row['users_better'])}, "
                 f"worse {int(row['users_worse'])})" for name, row in comparison.iterrows()]
        text += "\n\npaired over users:\n" + "\n".join(lines)
    return text


def read_user_ids(users: str | None, users_file: str | None) -> list[str]:
    """Ids from ``--users a,b,c`` and/or ``--users-file`` (one per line, blank lines ignored), de-duplicated."""
    ids: list[str] = []
    if users:
        ids += [u.strip() for u in users.split(",") if u.strip()]
    if users_file:
        path = Path(users_file)
        if not path.is_file():
            raise InputDataError(f"--users-file {users_file}: no such file")
        ids += [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not ids:
        raise InputDataError("no user ids given: use --users id1,id2 and/or --users-file FILE (one id per line)")
    return list(dict.fromkeys(ids))


def add_forget_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``forget-users`` command's arguments."""
    from adrec_spark.io.erasure import DEFAULT_RETENTION_HOURS

    parser.add_argument("--users", help="comma-separated user ids to forget")
    parser.add_argument("--users-file", help="file with one user id per line (blank lines ignored)")
    parser.add_argument("--vacuum", action="store_true",
                        help="VACUUM every table afterwards, so older table versions lose the deleted rows too")
    parser.add_argument("--retention-hours", type=float, default=DEFAULT_RETENTION_HOURS,
                        help="VACUUM retention in hours (default 168; below that only while no job writes)")


def cmd_forget_users(args: argparse.Namespace, cfg: AppConfig) -> int:
    """``adrec forget-users --users u1,u2 [--users-file F] [--vacuum [--retention-hours H]]``."""
    from adrec_spark.io.erasure import forget_users, vacuum_tables
    from adrec_spark.privacy import pseudonym_salt

    ids = read_user_ids(args.users, args.users_file)
    pseudonym_salt(cfg.privacy)  # a missing salt fails here, before the session starts
    if args.vacuum and args.retention_hours < 0:
        raise InputDataError(f"--retention-hours must be >= 0, got {args.retention_hours}")
    spark = _session(cfg, "forget-users")
    deleted = forget_users(spark, cfg, ids)
    for name, n in deleted.items():
        print(f"{name}: deleted {n} row(s)")
    if args.vacuum:
        for name in vacuum_tables(spark, cfg, args.retention_hours):
            print(f"{name}: vacuumed (retention {args.retention_hours:g} h)")
    else:
        print("older table versions still hold the deleted rows until VACUUM (rerun with --vacuum)")
    return 0


def cmd_demo(args: argparse.Namespace, cfg: AppConfig) -> int:
    """generate -> ETL -> train -> score -> evaluate on the embedded default; prints what a person looks at."""
    from pathlib import Path

    from adrec_spark.etl.pipeline import run_etl
    from adrec_spark.evaluation.pipeline import run_evaluation
    from adrec_spark.samples.generator import GeneratorSpec, generate
    from adrec_spark.scoring.pipeline import run_scoring
    from adrec_spark.training.pipeline import run_training

    spec = GeneratorSpec(n_users=args.users, n_ads=args.ads, n_events=args.events, n_days=args.days, seed=args.seed)
    landing = Path(cfg.storage.raw_events).parent
    first, last = spec.start, spec.start + dt.timedelta(days=spec.n_days - 1)
    print(f"[1/5] generating sample logs under {landing} ...", flush=True)
    generate(spec, landing)
    spark = _session(cfg, "demo")
    print(f"[2/5] ETL {first}..{last} into {cfg.storage.lakehouse} ...", flush=True)
    etl = run_etl(spark, cfg, first, last)
    print(f"      input {etl.input_rows} = clean {etl.clean_rows} + rejected {etl.rejected_rows} + duplicates "
          f"{etl.duplicate_rows}; {etl.training_examples} training examples", flush=True)
    print("[3/5] fine-tuning all-MiniLM-L6-v2 and registering it in MLflow ...", flush=True)
    trained = run_training(spark, cfg)
    print(f"      {cfg.mlflow.model_name} v{trained.model_version}: test AUC {trained.test_auc:.4f} "
          f"(before fine-tuning {trained.pretrained_test_auc or float('nan'):.4f}); {trained.decision}", flush=True)
    print(f"[4/5] scoring {last} ...", flush=True)
    scored = run_scoring(spark, cfg, last)
    print(f"      {scored.pairs_scored} pairs for {scored.users} users in {scored.seconds:.0f}s", flush=True)
    print("[5/5] evaluating against the baselines ...", flush=True)
    ev = run_evaluation(spark, cfg, last)
    print("\n" + headline(ev.table, ev.beyond, ev.comparison, ev.info))
    print("\n" + recommendation_samples(spark, cfg, last))
    print(f"\nreport:    {ev.report_path.resolve()}")
    print(f"tables:    {Path(cfg.storage.lakehouse).resolve()}/<table> (Delta)")
    print(f"MLflow UI: make mlflow-ui  (then open http://127.0.0.1:5000; store {cfg.mlflow.tracking_uri})")
    return 0


def recommendation_samples(spark, cfg: AppConfig, date: dt.date, users: int = 3) -> str:
    """What ``demo`` and ``evaluate`` print: a heading and a few users' lists of ``date`` (or why there are none)."""
    from adrec_spark import schema as S
    from adrec_spark.io import tables

    if tables.table_version(spark, cfg.storage, S.RECOMMENDATIONS) is None:
        return f"No recommendations to show for {date} (run the scoring job)."
    text = sample_recommendations(spark, cfg, date, users)
    return f"A few users' recommendations of {date}:\n{text}" if text else f"No recommendations of {date} to show."


def sample_recommendations(spark, cfg: AppConfig, date: dt.date, users: int = 3) -> str:
    from pyspark.sql import functions as F

    from adrec_spark import schema as S
    from adrec_spark.io import tables

    recs = tables.read_table(spark, cfg.storage, S.RECOMMENDATIONS).where(
        F.col(S.SCORE_DATE) == F.lit(date.isoformat()).cast("date"))
    ads = tables.read_table(spark, cfg.storage, S.ADS).where(F.col(S.DS) == F.lit(date.isoformat()).cast("date"))
    profiles = tables.read_table(spark, cfg.storage, S.USER_PROFILES).where(
        F.col(S.DS) == F.lit(date.isoformat()).cast("date"))
    chosen = [r[0] for r in recs.where(F.col(S.STRATEGY) == "personalized").select(S.USER_ID).distinct()
              .orderBy(S.USER_ID).limit(users).collect()]
    rows = (recs.where(F.col(S.USER_ID).isin(chosen)).join(ads.select(S.AD_ID, S.TITLE), S.AD_ID)
            .orderBy(S.USER_ID, S.RANK).collect())
    hist = {r[0]: r[1] for r in profiles.where(F.col(S.USER_ID).isin(chosen)).select(S.USER_ID, S.HISTORY_TEXT)
            .collect()}
    lines = []
    for user in chosen:
        lines.append(f"  {user}  history: {hist.get(user, '')[:110]}...")
        for r in (x for x in rows if x[S.USER_ID] == user):
            lines.append(f"    {r[S.RANK]:>2}. {r[S.TITLE][:48]:<48} {r[S.SCORE]:.3f}  {r[S.REASON]}")
    return "\n".join(lines)


def _register_later_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser,
                             commands: dict[str, Command]) -> None:
    """Commands whose modules pull in torch/mlflow: registered here, imported only when run."""
    p = sub.add_parser("train", parents=[common], help="fine-tune, log and register the relevance model")
    p.add_argument("--init-from", metavar="ALIAS",
                   help="warm-start from this registered alias (e.g. champion) for periodic retraining")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    commands["train"] = cmd_train

    p = sub.add_parser("score", parents=[common], help="score users x ads for a date; write scores and top-K")
    p.add_argument("--date", type=_date, required=True, help="the date whose profiles and ads to score")
    p.add_argument("--full", action="store_true",
                   help="score every pair, whatever score.mode says (incremental reuses the previous date's scores)")
    commands["score"] = cmd_score

    p = sub.add_parser("evaluate", parents=[common], help="model vs baselines: metrics, eval_metrics, HTML report")
    p.add_argument("--date", type=_date, help="recommendations date for beyond-accuracy metrics (default: latest)")
    commands["evaluate"] = cmd_evaluate

    p = sub.add_parser("demo", parents=[common], help="generate, ETL, train, score, evaluate on the local default")
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--ads", type=int, default=200)
    p.add_argument("--events", type=int, default=30_000)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--seed", type=int, default=0)
    commands["demo"] = cmd_demo

    p = sub.add_parser("forget-users", parents=[common], help="delete users from every table (right to be forgotten)")
    add_forget_arguments(p)
    commands["forget-users"] = cmd_forget_users


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parse_args(parser, list(sys.argv[1:] if argv is None else argv))
    configure_logging(args.log_level)
    try:
        cfg = load(args)
        with terminate_as_error():
            return commands[args.command](args, cfg)
    except AdrecError as e:
        log.debug("error details", exc_info=True)
        print(f"adrec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (JobTerminated, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, JobTerminated) else signal.SIGINT
        print(f"adrec {args.command}: stopped by {signal.Signals(signum).name}; the tables it had replaced were "
              "put back unless the log says otherwise (rerun it)", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
