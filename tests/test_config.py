from __future__ import annotations

from pathlib import Path

import pytest

from adrec_spark.config import AppConfig, load_config, parse_override, replace
from adrec_spark.errors import ConfigError
from adrec_spark.session import spark_conf

ROOT = Path(__file__).resolve().parents[1]


def test_local_yaml_spells_out_the_embedded_defaults() -> None:
    assert load_config([ROOT / "conf" / "local.yaml"]) == AppConfig()


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-gpu.yaml", "movielens.yaml"])
def test_shipped_config_files_load(name: str) -> None:
    load_config([ROOT / "conf" / name])


def test_override_types_and_nesting() -> None:
    cfg = load_config(overrides=["train.epochs=3", "train.split.method=dates", "train.split.valid_start=2024-01-10",
                                 "train.split.test_start=2024-01-12", "score.precision=bf16",
                                 "evaluate.ks=[1, 3]", "spark.conf={'spark.x': 1}"])
    assert cfg.train.epochs == 3
    assert cfg.train.split.valid_start == "2024-01-10"
    assert cfg.score.precision == "bf16"
    assert cfg.evaluate.ks == (1, 3)
    assert cfg.spark.conf == {"spark.x": "1"}
    assert load_config(overrides=["train.learning_rate=5e-4"]).train.learning_rate == 5e-4


def test_unknown_key_is_rejected_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'etl.lookbak_days' \(did you mean 'lookback_days'\?\)"):
        load_config(overrides=["etl.lookbak_days=3"])
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load_config(overrides=["nope.x=1"])


@pytest.mark.parametrize("item, message", [
    ("train.epochs=two", "train.epochs': expected an integer"),
    ("train.epochs=0", "train.epochs': must be >= 1"),
    ("train.epochs=true", "expected an integer"),
    ("score.precision=fp8", "'fp8' is not one of"),
    ("train.split.valid_fraction=0.95", "valid_fraction + test_fraction must be < 1"),
    ("train.split.method=dates", "needs valid_start and test_start"),
    ("train.split.valid_start=yesterday", "not an ISO date"),
    ("train.split.test_days=0", "must be >= 1"),
    ("train.promotion_auc_margin=0", "a tie must never promote"),
    ("train.promotion_ndcg_margin=-0.1", "a tie must never promote"),
    ("train.promotion_k=0", "must be >= 1"),
    ("evaluate.baselines=[random, magic]", "unknown ['magic']"),
    ("train.lora=yes please", "expected true or false"),
    ("etl", "expected key=value"),
    ("train.champion_alias=best model", "not a valid alias"),
    ("score.model_alias=latest", "reserved by MLflow"),
    ("train.challenger_alias=champion", "must differ"),
])
def test_bad_values_fail_on_the_driver_with_the_key(item: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[item])
    assert message in str(e.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("etl: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([bad])
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config([top])


def test_later_files_and_overrides_win(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("train: {epochs: 5, batch_size: 8}\nspark: {conf: {a: '1'}}\n")
    b.write_text("train: {epochs: 6}\nspark: {conf: {b: '2'}}\n")
    cfg = load_config([a, b], ["train.batch_size=4"])
    assert (cfg.train.epochs, cfg.train.batch_size) == (6, 4)
    assert cfg.spark.conf == {"a": "1", "b": "2"}


def test_replace_revalidates() -> None:
    cfg = replace(AppConfig(), "score.top_k=3")
    assert cfg.score.top_k == 3
    with pytest.raises(ConfigError):
        replace(cfg, "score.top_k=0")


def test_parse_override_yaml_values() -> None:
    assert parse_override("a.b=null") == {"a": {"b": None}}
    assert parse_override("a=x=y") == {"a": "x=y"}


def test_spark_conf_points_at_local_jars_or_packages(tmp_path: Path) -> None:
    (tmp_path / "delta.jar").write_text("")
    conf = spark_conf(load_config(overrides=[f"spark.jars_dir={tmp_path}"]).spark)
    assert conf["spark.jars"].endswith("delta.jar")
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert "DeltaSparkSessionExtension" in conf["spark.sql.extensions"]
    conf = spark_conf(load_config(overrides=["spark.use_packages=true"]).spark)
    assert conf["spark.jars.packages"].startswith("io.delta:delta-spark_4.2_2.13")
    with pytest.raises(ConfigError, match="make setup"):
        spark_conf(load_config(overrides=[f"spark.jars_dir={tmp_path / 'none'}"]).spark)


def test_arrow_batches_bounded_by_rows_and_optionally_bytes() -> None:
    conf = spark_conf(load_config(overrides=["spark.use_packages=true"]).spark)
    assert conf["spark.sql.execution.arrow.maxRecordsPerBatch"] == "2048"
    assert "spark.sql.execution.arrow.maxBytesPerBatch" not in conf
    cfg = load_config(overrides=["spark.use_packages=true", "spark.arrow_max_bytes_per_batch=8388608"])
    conf = spark_conf(cfg.spark)
    assert conf["spark.sql.execution.arrow.maxBytesPerBatch"] == "8388608"
    with pytest.raises(ConfigError, match=r"spark\.arrow_max_bytes_per_batch"):
        load_config(overrides=["spark.arrow_max_bytes_per_batch=0"])


@pytest.fixture
def no_jar_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No $ADREC_JARS_DIR, an empty user cache under ``tmp_path``, and ``tmp_path/elsewhere`` as the cwd."""
    monkeypatch.delenv("ADREC_JARS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return elsewhere


def test_jars_are_found_from_another_working_directory(no_jar_settings: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # the default (conf/local.yaml) finds the jars `make setup` put in this checkout's .jars
    conf = spark_conf(load_config([ROOT / "conf" / "local.yaml"]).spark)
    assert conf["spark.jars"].split(",") == sorted(str(p.absolute()) for p in (ROOT / ".jars").glob("*.jar"))
    # $ADREC_JARS_DIR (e.g. after `python -m adrec_spark.jars --dest ...`) wins over the checkout's
    mine = tmp_path / "my-jars"
    mine.mkdir()
    (mine / "delta-spark.jar").write_text("")
    monkeypatch.setenv("ADREC_JARS_DIR", str(mine))
    assert spark_conf(AppConfig().spark)["spark.jars"] == str(mine / "delta-spark.jar")


def test_jars_in_the_user_cache_are_found_outside_a_checkout(no_jar_settings: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from adrec_spark import jars

    monkeypatch.setattr(jars, "source_tree_jars_dir", lambda: None)  # as installed from a wheel
    cache = tmp_path / "cache" / "adrec-spark" / "jars"
    cache.mkdir(parents=True)
    (cache / "delta.jar").write_text("")
    assert spark_conf(AppConfig().spark)["spark.jars"] == str(cache / "delta.jar")


def test_missing_jars_message_names_every_absolute_path_and_the_ways_out(
        no_jar_settings: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adrec_spark import jars

    monkeypatch.setattr(jars, "source_tree_jars_dir", lambda: tmp_path / "checkout" / ".jars")
    with pytest.raises(ConfigError) as e:
        spark_conf(AppConfig().spark)
    message = str(e.value)
    for place in (tmp_path / "checkout" / ".jars", tmp_path / "cache" / "adrec-spark" / "jars"):
        assert str(place) in message
    for way_out in ("make setup", "python -m adrec_spark.jars", "ADREC_JARS_DIR", "spark.jars_dir",
                    "spark.use_packages=true"):
        assert way_out in message
    # a relative folder the user named is reported as the absolute path it means here
    with pytest.raises(ConfigError) as e:
        spark_conf(load_config(overrides=["spark.jars_dir=.jars"]).spark)
    assert str(no_jar_settings / ".jars") in str(e.value)
    # a folder named by $ADREC_JARS_DIR is the only place looked at: a wrong setting is not passed over
    monkeypatch.setenv("ADREC_JARS_DIR", str(tmp_path / "typo"))
    with pytest.raises(ConfigError, match="typo"):
        spark_conf(AppConfig().spark)


@pytest.mark.parametrize("item, moved_to", [("etl.split.method=fraction", "train.split"),
                                            ("etl.split.test_fraction=0.2", "train.split"),
                                            ("train.promotion_margin=0.01", "train.promotion_auc_margin")])
def test_moved_keys_say_where_they_went(item: str, moved_to: str) -> None:
    with pytest.raises(ConfigError, match=rf"no longer a setting: .*'{moved_to}'"):
        load_config(overrides=[item])


def test_text_similarity_features_switch() -> None:
    from adrec_spark import schema as S

    off = load_config()
    assert off.model.numeric_features() == S.NUMERIC_FEATURES
    assert off.model.model_user_features() == off.model.user_features
    on = load_config(overrides=["model.text_similarity_features=true"])
    assert on.model.numeric_features() == (*S.NUMERIC_FEATURES, *S.TEXT_SIMILARITY_FEATURES)
    assert on.model.model_user_features() == (*on.model.user_features, "click_texts", "search_texts", "review_texts")
    no_bias = load_config(overrides=["model.text_similarity_features=true", "model.user_features=[]"])
    assert no_bias.model.model_user_features() == ()
    with pytest.raises(ConfigError, match=r"model\.text_similarity_features"):
        load_config(overrides=["model.text_similarity_features=maybe"])
