"""Scores of the baselines a team would try first, on the same test rows as the model.

Each function returns the test rows with one added score column. Models that learn (logistic regression,
ALS) are fitted on the train split only; the count and rate baselines read the point-in-time features.
"""

from __future__ import annotations

from pyspark.ml import Pipeline
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import StandardScaler, StringIndexer, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from adrec_spark import schema as S
from adrec_spark.etl.features import AD_IMPRESSIONS
from adrec_spark.frames import require_columns

# A method's optional second column, ``<method>__rank``, ranks one user's rows when its score carries a term
# that depends on the user alone (see rank_column).
RANK_SUFFIX = "__rank"

# method -> are its scores probabilities (log-loss and calibration make sense)?
PROBABILISTIC = {"random": True, "popularity": False, "item_rate": True, "logistic_regression": True,
                 "logistic_regression_text": True, "als": False, "pretrained": False, "model": True}


def rank_column(method: str, columns: list[str]) -> str:
    """The column that ranks one user's rows for ``method``: ``<method>__rank`` where the method has one (its
    logit less the terms that depend on the user's features alone), else its score."""
    return method + RANK_SUFFIX if method + RANK_SUFFIX in columns else method


def random_scores(test: DataFrame, *, seed: int, out: str = "random") -> DataFrame:
    return test.withColumn(out, F.rand(seed))


def popularity_scores(test: DataFrame, *, out: str = "popularity") -> DataFrame:
    """How often the ad was shown before the impression (point in time)."""
    require_columns(test, (AD_IMPRESSIONS,), "popularity_scores")
    return test.withColumn(out, F.col(AD_IMPRESSIONS).cast("double"))


def item_rate_scores(test: DataFrame, *, out: str = "item_rate") -> DataFrame:
    """The ad's smoothed click rate before the impression."""
    require_columns(test, (S.AD_RATE,), "item_rate_scores")
    return test.withColumn(out, F.col(S.AD_RATE).cast("double"))


def logistic_regression_scores(train: DataFrame, test: DataFrame, *, out: str = "logistic_regression",
                               reg: float = 0.01, user_features: tuple[str, ...] = (),
                               features: tuple[str, ...] = S.NUMERIC_FEATURES) -> DataFrame:
    """Spark MLlib logistic regression on the standardized ``features`` (the numeric features by default). With
    ``user_features`` it also writes ``<out>__rank``: the logit less those features' terms, which ranks one
    user's rows (the same treatment as the model's user bias, so the comparison stays even)."""
    cols = list(features)
    require_columns(train, (*cols, S.LABEL), "logistic_regression_scores (train)")
    pipeline = Pipeline(stages=[
        VectorAssembler(inputCols=cols, outputCol="_x", handleInvalid="keep"),
        StandardScaler(inputCol="_x", outputCol="_xs", withMean=True, withStd=True),
        LogisticRegression(featuresCol="_xs", labelCol=S.LABEL, regParam=reg, probabilityCol="_p",
                           rawPredictionCol="_raw", predictionCol="_pred"),
    ])
    fitted = pipeline.fit(train.withColumn(S.LABEL, F.col(S.LABEL).cast("double")))
    scored = fitted.transform(test).withColumn(out, vector_to_array(F.col("_p"))[1])
    if user_features:
        scaler, lr = fitted.stages[1], fitted.stages[2]
        mean, std, coef = scaler.mean.toArray(), scaler.std.toArray(), lr.coefficients.toArray()
        user_term = F.lit(0.0)
        for i, c in enumerate(cols):
            if c in user_features and std[i] > 0:  # MLlib's scaler maps a constant feature to 0
                user_term = user_term + float(coef[i] / std[i]) * (F.col(c).cast("double") - float(mean[i]))
        scored = scored.withColumn(out + RANK_SUFFIX, vector_to_array(F.col("_raw"))[1] - user_term)
    return scored.drop("_x", "_xs", "_p", "_raw", "_pred")


def logistic_regression_text_scores(train: DataFrame, test: DataFrame, *, out: str = "logistic_regression_text",
                                    reg: float = 0.01, user_features: tuple[str, ...] = ()) -> DataFrame:
    """"Logistic regression + text similarity": the logistic regression on the numeric features and
    ``schema.TEXT_SIMILARITY_FEATURES`` (both frames with them already, see
    :func:`adrec_spark.scoring.text_similarity.with_text_similarity`). The counts of history texts describe the
    user alone, so they join ``user_features`` for ``<out>__rank``."""
    return logistic_regression_scores(
        train, test, out=out, reg=reg, features=(*S.NUMERIC_FEATURES, *S.TEXT_SIMILARITY_FEATURES),
        user_features=(*user_features, *S.TEXT_SIMILARITY_USER_FEATURES) if user_features else ())


def als_scores(train: DataFrame, test: DataFrame, *, rank: int, max_iter: int, reg: float, seed: int,
               out: str = "als") -> DataFrame:
    """Spark MLlib ALS (explicit, on the 0/1 click label) fitted on train; users or ads unseen in train get
    the train click rate (ALS has nothing to say about them)."""
    require_columns(train, (S.USER_ID, S.AD_ID, S.LABEL), "als_scores (train)")
    indexer = StringIndexer(inputCols=[S.USER_ID, S.AD_ID], outputCols=["_u", "_i"], handleInvalid="keep").fit(train)
    als = ALS(rank=rank, maxIter=max_iter, regParam=reg, userCol="_u", itemCol="_i", ratingCol=S.LABEL,
              coldStartStrategy="nan", seed=seed, nonnegative=True)
    model = als.fit(indexer.transform(train).withColumn(S.LABEL, F.col(S.LABEL).cast("float")))
    mean = train.agg(F.avg(S.LABEL)).first()[0] or 0.0
    scored = model.transform(indexer.transform(test))
    fallback = F.when(F.isnan("prediction") | F.col("prediction").isNull(), F.lit(float(mean))) \
        .otherwise(F.col("prediction"))
    return scored.withColumn(out, fallback.cast("double")).drop("_u", "_i", "prediction")
