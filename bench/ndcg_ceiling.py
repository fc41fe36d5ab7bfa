"""How far can per-user NDCG@10 go on the MovieLens protocol with classical signals? (`bench/run.py ceiling`)

Runs on the tables `make bench-quality` built (bench/.work/movielens) and the raw ratings, in pandas and
scikit-learn (an independent check, not the evaluation job). Each row ranks a user's test rows by one score
(ties by ad id) and reports NDCG@10 over the users with a positive, as the protocol defines it; rows fitted
on the train split also report their test AUC. Logistic regressions rank by their terms that are not
user-only (the evaluation job's treatment).

Added signals, all point in time (only ratings strictly earlier than the row's own):
- content: the movie's release year and its genre flags;
- taste: the user's smoothed positive rate on the movie's genres, less their overall rate;
- co-liking: the movie's mean cosine (co-liked by the same users in the train split) with the user's
  earlier liked movies, and with their earlier disliked ones;
- demographic lift: the movie's smoothed positive rate among its earlier raters of the user's gender, age
  band and occupation (users.parquet), less its rate among all its earlier raters.
Writes bench/results/ndcg-ceiling.json.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd

from bench.common import WORK, save

W = WORK / "movielens"
USER_ONLY = ("user_rate", "user_log_impressions")
BASE = ("user_rate", "user_log_impressions", "ad_rate", "ad_log_impressions", "log_price", "category_match")


def ndcg10(test: pd.DataFrame, scores: np.ndarray) -> float:
    out = []
    for _, g in test.assign(_s=np.asarray(scores, dtype=float)).groupby("user_id"):
        rel = g.sort_values(["_s", "ad_id"], ascending=[False, True])["label"].to_numpy()
        if rel.sum() == 0:
            continue
        disc = 1 / np.log2(np.arange(2, 12))
        top, ideal = rel[:10], np.sort(rel)[::-1][:10]
        out.append((top * disc[:len(top)]).sum() / (ideal * disc[:len(ideal)]).sum())
    return float(np.mean(out))


def _time_ordered(ratings: pd.DataFrame) -> pd.DataFrame:
    """The ratings in the protocol's order (timestamp, user, movie) with their label (rating >= 4)."""
    r = ratings.sort_values(["timestamp", "user_id", "movie_id"]).reset_index(drop=True)
    r["label"] = (r.rating >= 4).astype(int)
    return r


def personal_signals(ratings: pd.DataFrame, items: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """taste, co-like and co-dislike per rating, from the same user's strictly earlier ratings."""
    genres = list(items.columns[5:])
    flags = np.zeros((int(items.movie_id.max()) + 1, len(genres)), np.float32)
    flags[items.movie_id.to_numpy()] = items[genres].to_numpy()
    r = _time_ordered(ratings)
    train = r.iloc[: int(0.8 * len(r))]
    liked = train[train.label == 1]
    x = np.zeros((int(r.user_id.max()) + 1, flags.shape[0]), np.float32)
    x[liked.user_id, liked.movie_id] = 1
    co = x.T @ x
    norm = np.sqrt(np.diag(co)) + 1e-6
    sim = co / norm[:, None] / norm[None, :]
    np.fill_diagonal(sim, 0)
    taste, like, dislike = np.zeros(len(r)), np.zeros(len(r)), np.zeros(len(r))
    for _, g in r.groupby("user_id"):
        idx, ts, lab, movies = g.index.to_numpy(), g.timestamp.to_numpy(), g.label.to_numpy(), g.movie_id.to_numpy()
        before = np.searchsorted(ts, ts, side="left")  # rows [0, before) are strictly earlier
        gen = flags[movies]
        pos_g = np.vstack([np.zeros(len(genres)), np.cumsum(gen * lab[:, None], 0)])[before]
        n_g = np.vstack([np.zeros(len(genres)), np.cumsum(gen, 0)])[before]
        pos = np.concatenate([[0], np.cumsum(lab)])[before]
        rate = (pos + 0.55 * 5) / (before + 5)
        genre_rate = (pos_g + rate[:, None] * 3) / (n_g + 3)
        taste[idx] = ((genre_rate - rate[:, None]) * gen).sum(1) / gen.sum(1).clip(min=1)
        m = sim[np.ix_(movies, movies)]
        rows = np.arange(len(movies))
        cum_like = np.concatenate([np.zeros((len(movies), 1)), np.cumsum(m * lab[None, :], 1)], 1)[rows, before]
        cum_dis = np.concatenate([np.zeros((len(movies), 1)), np.cumsum(m * (1 - lab)[None, :], 1)], 1)[rows, before]
        like[idx] = cum_like / np.maximum(pos, 1)
        dislike[idx] = cum_dis / np.maximum(before - pos, 1)
    year = pd.to_numeric(items.movie_title.str.extract(r"\((\d{4})\)\s*$")[0], errors="coerce").fillna(1990)
    content = pd.DataFrame({"movie_id": items.movie_id, "year": (year - 1990) / 10, **{g: items[g] for g in genres}})
    out = pd.DataFrame({"user_id": r.user_id, "movie_id": r.movie_id, "timestamp": r.timestamp, "taste": taste,
                        "co_like": like, "co_dislike": dislike})
    return out.merge(content, on="movie_id", how="left"), genres


def _strictly_earlier(df: pd.DataFrame, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ratings, positives) of the same ``keys`` strictly earlier than each row (``df`` sorted by time)."""
    grp = df.groupby(keys, sort=False)
    n = grp.cumcount().to_numpy()
    pos = (grp.label.cumsum() - df.label).to_numpy()
    tie = df.groupby([*keys, "timestamp"], sort=False)  # rows at the same second do not see each other
    return n - tie.cumcount().to_numpy(), pos - (tie.label.cumsum() - df.label).to_numpy()


def group_signals(ratings: pd.DataFrame, users: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """How much more (or less) the movie is liked by earlier raters who share the user's gender, age band or
    occupation than by all its earlier raters: static attributes, so they do not move with the user's own
    ratings over the test period (unlike the taste signals)."""
    r = _time_ordered(ratings)
    u = users.assign(age_band=pd.cut(users.age, [0, 24, 34, 44, 200], labels=False))
    r = r.merge(u[["user_id", "gender", "age_band", "occupation"]], on="user_id", how="left")
    n, pos = _strictly_earlier(r, ["movie_id"])
    item = (pos + 0.55 * 5) / (n + 5)
    out = pd.DataFrame({"user_id": r.user_id, "movie_id": r.movie_id, "timestamp": r.timestamp})
    names = []
    for key in ("gender", "age_band", "occupation"):
        n_g, pos_g = _strictly_earlier(r, ["movie_id", key])
        out[f"lift_{key}"] = (pos_g + item * 10) / (n_g + 10) - item
        names.append(f"lift_{key}")
    return out, names


def run() -> dict[str, object]:
    import deltalake
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from adrec_spark.samples.movielens import default_source

    warnings.filterwarnings("ignore")
    table = W / "lakehouse" / "training_examples"
    if not (table / "_delta_log").is_dir():
        raise SystemExit(f"{table} not found: run `make bench-quality` first")
    src = default_source()
    from adrec_spark.training.split import split_pandas

    ex = split_pandas(deltalake.DeltaTable(str(table)).to_pandas())  # the training job's split (train.split)
    signals, genres = personal_signals(pd.read_parquet(src / "ratings.parquet"), pd.read_parquet(src / "items.parquet"))
    ex["_u"], ex["_m"] = ex.user_id.str[1:].astype(int), ex.ad_id.str[1:].astype(int)
    ex["_t"] = ex.event_ts.round().astype("int64")
    ex = ex.merge(signals.rename(columns={"user_id": "_u", "movie_id": "_m", "timestamp": "_t"}),
                  on=["_u", "_m", "_t"], how="left", validate="one_to_one")
    groups, lifts = group_signals(pd.read_parquet(src / "ratings.parquet"), pd.read_parquet(src / "users.parquet"))
    ex = ex.merge(groups.rename(columns={"user_id": "_u", "movie_id": "_m", "timestamp": "_t"}),
                  on=["_u", "_m", "_t"], how="left", validate="one_to_one")
    train, test = ex[ex.split == "train"].reset_index(drop=True), ex[ex.split == "test"].reset_index(drop=True)
    rows: list[dict[str, object]] = []

    def add(name: str, scores: np.ndarray, auc: float | None = None) -> None:
        rows.append({"ranker": name, "ndcg@10": ndcg10(test, scores), "test_auc": auc})

    add("ad_rate (the item-rate baseline)", test.ad_rate.to_numpy())
    prior = train.label.mean()
    for strength in (1, 5, 20, 50):
        add(f"item rate smoothed with {strength} pseudo-ratings",
            ((test.ad_clicks + prior * strength) / (test.ad_impressions + strength)).to_numpy())
    add("minus user_rate (a user's point-in-time rate; absent when serving)", -test.user_rate.to_numpy())

    def logistic(extra: tuple[str, ...], name: str) -> None:
        cols = [*BASE, *extra]
        mu, sd = train[cols].mean(), train[cols].std() + 1e-9
        fit = LogisticRegression(max_iter=3000).fit(((train[cols] - mu) / sd).fillna(0), train.label)
        z = ((test[cols] - mu) / sd).fillna(0)
        w = pd.Series(fit.coef_[0], index=cols)
        pair = [c for c in cols if c not in USER_ONLY]
        add(name, (z[pair] @ w[pair]).to_numpy(), roc_auc_score(test.label, fit.decision_function(z)))

    logistic((), "logistic regression, numeric features")
    logistic(("year", *genres), "  + content (release year, genres)")
    logistic(("taste",), "  + genre taste")
    logistic(("co_like", "co_dislike"), "  + co-liking with earlier liked / disliked movies")
    logistic(tuple(lifts), "  + demographic lift (the movie among earlier raters of the user's gender, age, job)")
    logistic(("taste", "co_like", "co_dislike", "year", *genres), "  + all of the above but the lift")
    item = ["ad_rate", "ad_log_impressions", "log_price", "category_match"]
    gb = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0).fit(train[item], train.label)
    p = gb.predict_proba(test[item])[:, 1]
    add("gradient boosting, item features", p, roc_auc_score(test.label, p))

    width = max(len(r["ranker"]) for r in rows)
    print(f"{'ranker':{width}s}  NDCG@10  test AUC")
    for r in rows:
        auc = f"{r['test_auc']:.4f}" if r["test_auc"] is not None else "-"
        print(f"{r['ranker']:{width}s}  {r['ndcg@10']:.4f}   {auc}")
    save("ndcg-ceiling", {"command": "python bench/run.py ceiling", "test_rows": len(test),
                          "users": int(test.groupby("user_id").label.max().sum()), "rows": rows})
    return {"rows": json.loads(json.dumps(rows))}
