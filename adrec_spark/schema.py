"""Names shared by every module: tables, columns, event types, features. One place to change them."""

from __future__ import annotations

# Tables (Delta, under <storage.lakehouse>/<name>)
EVENTS_CLEAN = "events_clean"
EVENTS_REJECTED = "events_rejected"
ADS = "ads"
USER_PROFILES = "user_profiles"
TRAINING_EXAMPLES = "training_examples"
ETL_RUNS = "etl_runs"
USER_AD_SCORES = "user_ad_scores"
RECOMMENDATIONS = "recommendations"
EVAL_METRICS = "eval_metrics"
SCORING_RUNS = "scoring_runs"  # one row per scored date: mode, base date, table versions (incremental scoring)
USER_EMBEDDINGS = "user_embeddings"  # per scored date and user: the retrieval embedding (reused by incremental nights)
ALL_TABLES = (EVENTS_CLEAN, EVENTS_REJECTED, ADS, USER_PROFILES, TRAINING_EXAMPLES, ETL_RUNS,
              USER_AD_SCORES, RECOMMENDATIONS, EVAL_METRICS, USER_EMBEDDINGS)

# Partition column of every nightly table: the processing (landing) date.
DS = "ds"
SCORE_DATE = "score_date"

# Raw input contract
EVENT_ID = "event_id"
USER_ID = "user_id"
AD_ID = "ad_id"
EVENT_TYPE = "event_type"
EVENT_TIME = "event_time"
TEXT = "text"
VALUE = "value"
RAW_EVENT_COLUMNS = (EVENT_ID, USER_ID, AD_ID, EVENT_TYPE, EVENT_TIME, TEXT, VALUE)

TITLE = "title"
DESCRIPTION = "description"
CATEGORY = "category"
ADVERTISER_ID = "advertiser_id"
PRICE = "price"
START_DATE = "start_date"
END_DATE = "end_date"
RAW_AD_COLUMNS = (AD_ID, TITLE, DESCRIPTION, CATEGORY, ADVERTISER_ID, PRICE)
OPTIONAL_AD_COLUMNS = (START_DATE, END_DATE)

IMPRESSION = "impression"
CLICK = "click"
CONVERSION = "conversion"
QUERY = "query"
REVIEW = "review"
EVENT_TYPES = (IMPRESSION, CLICK, CONVERSION, QUERY, REVIEW)
AD_EVENT_TYPES = (IMPRESSION, CLICK, CONVERSION, REVIEW)  # must name a known ad
HISTORY_EVENT_TYPES = (CLICK, CONVERSION, QUERY, REVIEW)  # what a user's history text is made of

# Derived columns
EVENT_TS = "event_ts"  # event time as epoch seconds (double)
AD_TEXT = "ad_text"
HISTORY_TEXT = "history_text"
# The texts of the history window by kind, newest first (training_examples and user_profiles): the clicked or
# bought ads' ad texts (distinct), the queries, the review texts. What the text-similarity features embed.
HISTORY_CLICK_TEXTS = "history_click_texts"
HISTORY_SEARCH_TEXTS = "history_search_texts"
HISTORY_REVIEW_TEXTS = "history_review_texts"
HISTORY_ITEM_TEXTS = (HISTORY_CLICK_TEXTS, HISTORY_SEARCH_TEXTS, HISTORY_REVIEW_TEXTS)
LABEL = "label"
RELEVANCE = "relevance"  # graded: 0 none, 1 click, 2 conversion
SPLIT = "split"
SOURCE = "source"
REASON = "reason"
PAYLOAD = "payload"
SCORE = "score"
# The text part of a pair's logit (the encoder pass): carried over by incremental scoring while both texts stay
TEXT_LOGIT = "text_logit"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
RANK = "rank"
STRATEGY = "strategy"
CONTENT_HASH = "content_hash"  # per user profile and per ad snapshot: what changed since an earlier date

TRAIN, VALID, TEST = "train", "valid", "test"

# Numeric features, in the order the model reads them. Built by one function for training and scoring.
USER_RATE = "user_rate"
USER_LOG_IMPRESSIONS = "user_log_impressions"
AD_RATE = "ad_rate"
AD_LOG_IMPRESSIONS = "ad_log_impressions"
LOG_PRICE = "log_price"
CATEGORY_MATCH = "category_match"
NUMERIC_FEATURES = (USER_RATE, USER_LOG_IMPRESSIONS, AD_RATE, AD_LOG_IMPRESSIONS, LOG_PRICE, CATEGORY_MATCH)

# Text-similarity features (adrec_spark/scoring/text_similarity.py): the ad text's cosine, under the pretrained
# encoder, to the texts of the user's history window by kind (max and mean; 0 without such texts) and how many
# texts of each kind there were.
TEXT_SIMILARITY_FEATURES = ("click_cos_max", "click_cos_mean", "search_cos_max", "search_cos_mean",
                            "review_cos_max", "review_cos_mean", "click_texts", "search_texts", "review_texts")
TEXT_SIMILARITY_USER_FEATURES = ("click_texts", "search_texts", "review_texts")  # describe the user alone

# What the model reads per pair
MODEL_INPUT_COLUMNS = (HISTORY_TEXT, AD_TEXT, *NUMERIC_FEATURES)
