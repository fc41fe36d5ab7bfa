"""MovieLens-100k as ad logs: every rating is an impression of that title to that user, a rating >= 4 is
also a click at the same second; the ad text is ``Title (Year) | Genres: g1, g2``.

Reads the Parquet copy in ``shared/data/movielens-100k/`` (``ratings.parquet``, ``items.parquet``) or the
original GroupLens files (``u.data``, ``u.item``) from a folder the user gives, and writes the landing
layout the ETL reads. The data is never copied into the repository: ``out`` defaults to ``./data``.
Ids are zero-padded (``u0042``, ``m0007``) so that string order equals the protocol's numeric order.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from adrec_spark.errors import InputDataError

log = logging.getLogger(__name__)

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western"]
POSITIVE_RATING = 4


def default_source() -> Path:
    """``../shared/data/movielens-100k`` beside the checkout (or ``$ADREC_MOVIELENS``)."""
    import os

    env = os.environ.get("ADREC_MOVIELENS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "movielens-100k"


def read_movielens(src: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ratings, items) with columns user_id, movie_id, rating, timestamp / movie_id, movie_title, genres..."""
    src = Path(src)
    if (src / "ratings.parquet").is_file() and (src / "items.parquet").is_file():
        return pd.read_parquet(src / "ratings.parquet"), pd.read_parquet(src / "items.parquet")
    if (src / "u.data").is_file() and (src / "u.item").is_file():
        ratings = pd.read_csv(src / "u.data", sep="\t", names=["user_id", "movie_id", "rating", "timestamp"])
        items = pd.read_csv(src / "u.item", sep="|", encoding="latin-1", header=None,
                            names=["movie_id", "movie_title", "release_date", "video_release_date", "IMDb_URL",
                                   *GENRES])
        return ratings, items
    raise InputDataError(
        f"MovieLens-100k not found in {src}: expected ratings.parquet + items.parquet (or u.data + u.item)")


def _catalog(items: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("movie_id", "movie_title", *GENRES) if c not in items.columns]
    if missing:
        raise InputDataError(f"MovieLens items lack column(s) {', '.join(missing)}")
    flags = items[GENRES].to_numpy().astype(bool)
    genres = [[g for g, f in zip(GENRES, row, strict=True) if f] or ["unknown"] for row in flags]
    year = items["movie_title"].str.extract(r"\((\d{4})\)\s*$")[0]
    decade = year.fillna("0000").str[:3] + "0s"
    return pd.DataFrame({
        "ad_id": items["movie_id"].map(lambda m: f"m{int(m):04d}"),
        "title": items["movie_title"].fillna("unknown"),
        "description": ["Genres: " + ", ".join(g) for g in genres],
        "category": [g[0].lower() for g in genres],
        # ml-100k has no studio: the release decade stands in for the "advertiser" in fairness metrics.
        "advertiser_id": "decade-" + decade,
        "price": None,
        "start_date": None,
        "end_date": None,
    })


def _events(ratings: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("user_id", "movie_id", "rating", "timestamp") if c not in ratings.columns]
    if missing:
        raise InputDataError(f"MovieLens ratings lack column(s) {', '.join(missing)}")
    user = ratings["user_id"].map(lambda u: f"u{int(u):04d}")
    movie = ratings["movie_id"].map(lambda m: f"m{int(m):04d}")
    base = pd.DataFrame({"user_id": user, "ad_id": movie, "event_time": ratings["timestamp"].astype("int64"),
                         "text": None, "value": None})
    imp = base.assign(event_type="impression", event_id="imp-" + user + "-" + movie)
    liked = ratings["rating"].to_numpy() >= POSITIVE_RATING
    clk = base[liked].assign(event_type="click", event_id=("clk-" + user + "-" + movie)[liked])
    out = pd.concat([imp, clk], ignore_index=True)
    return out[["event_id", "user_id", "ad_id", "event_type", "event_time", "text", "value"]]


def write_landing(src: str | Path, out: str | Path) -> dict[str, object]:
    """Write ``<out>/events/date=*/`` (by UTC day of the rating) and ``<out>/ads/date=<first day>/``."""
    ratings, items = read_movielens(src)
    out = Path(out)
    events = _events(ratings)
    days = pd.to_datetime(events["event_time"], unit="s", utc=True).dt.date
    first = min(days)
    catalog_dir = out / "ads" / f"date={first.isoformat()}"
    catalog_dir.mkdir(parents=True, exist_ok=True)
    (catalog_dir / "ads-0.jsonl").write_text(_catalog(items).to_json(orient="records", lines=True))
    events["event_time"] = events["event_time"].astype(str)
    for day, part in events.groupby(days, sort=True):
        folder = out / "events" / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "events-0.jsonl").write_text(part.to_json(orient="records", lines=True))
    summary = {"ratings": len(ratings), "events": len(events), "clicks": int((ratings["rating"] >= 4).sum()),
               "items": len(items), "first_day": first.isoformat(), "last_day": max(days).isoformat(),
               "days": int(days.nunique())}
    log.info("MovieLens landing written under %s: %s", out, summary)
    return summary
