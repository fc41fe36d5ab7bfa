"""The ``adrec`` command line: options before and after the subcommand, named configs, ``adrec config``.

Parse-level only: every command's function is replaced by one that records what it was given, so no Spark starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from adrec_spark import cli
from adrec_spark.config import AppConfig

# The arguments each command needs to parse at all (the rest have defaults).
REQUIRED = {"score": ["--date", "2024-01-14"]}


def _commands() -> list[str]:
    return sorted(cli.build_parser()[1])


def run_capturing(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> dict[str, Any]:
    """``cli.main(argv)`` with every command replaced by a recorder of its (args, cfg)."""
    seen: dict[str, Any] = {}
    real = cli.build_parser

    def recorder(name: str):
        def run(args: argparse.Namespace, cfg: AppConfig) -> int:
            seen.update(name=name, args=args, cfg=cfg)
            return 0
        return run

    def fake_build_parser():
        parser, commands = real()
        return parser, {name: recorder(name) for name in commands}

    monkeypatch.setattr(cli, "build_parser", fake_build_parser)
    assert cli.main(argv) == 0
    return seen


@pytest.fixture
def two_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.delenv("ADREC_CONF", raising=False)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("score: {popular_pool: 7, top_k: 5}\nstorage: {lakehouse: /data/a}\n")
    b.write_text("score: {popular_pool: 8}\n")
    return a, b


@pytest.mark.parametrize("command", _commands())
@pytest.mark.parametrize("position", ["before", "after"])
def test_conf_set_and_log_level_work_before_and_after_the_subcommand(
        monkeypatch: pytest.MonkeyPatch, two_files: tuple[Path, Path], command: str, position: str) -> None:
    a, _ = two_files
    options = ["--conf", str(a), "--set", "score.top_k=3", "--log-level", "DEBUG"]
    cmd = [command, *REQUIRED.get(command, [])]
    argv = [*options, *cmd] if position == "before" else [*cmd, *options]
    seen = run_capturing(monkeypatch, argv)
    assert seen["name"] == command
    assert seen["cfg"].score.popular_pool == 7          # from the file
    assert seen["cfg"].storage.lakehouse == "/data/a"
    assert seen["cfg"].score.top_k == 3                 # --set wins over the file
    assert seen["args"].log_level == "DEBUG"


@pytest.mark.parametrize("command", _commands())
def test_mixed_positions_concatenate_top_level_first(
        monkeypatch: pytest.MonkeyPatch, two_files: tuple[Path, Path], command: str) -> None:
    a, b = two_files
    argv = ["--conf", str(a), "--set", "score.top_k=3", "--log-level", "ERROR",
            command, *REQUIRED.get(command, []), "--conf", str(b), "--set", "score.top_k=4", "--log-level", "DEBUG"]
    seen = run_capturing(monkeypatch, argv)
    assert seen["args"].conf == [str(a), str(b)]
    assert seen["args"].overrides == ["score.top_k=3", "score.top_k=4"]
    assert seen["cfg"].score.popular_pool == 8          # b is read after a
    assert seen["cfg"].storage.lakehouse == "/data/a"   # a's other keys stay
    assert seen["cfg"].score.top_k == 4                 # the subcommand's --set comes last
    assert seen["args"].log_level == "DEBUG"            # the one nearer the command wins


def test_environment_files_come_before_command_line_files(
        monkeypatch: pytest.MonkeyPatch, two_files: tuple[Path, Path]) -> None:
    a, b = two_files
    monkeypatch.setenv("ADREC_CONF", str(b))
    seen = run_capturing(monkeypatch, ["--conf", str(a), "etl", "--date", "2024-01-01"])
    assert seen["cfg"].score.popular_pool == 7


def test_log_level_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch,
                                               two_files: tuple[Path, Path]) -> None:
    monkeypatch.setenv("ADREC_LOG_LEVEL", "WARNING")
    assert run_capturing(monkeypatch, ["etl", "--date", "2024-01-01"])["args"].log_level == "WARNING"
    monkeypatch.delenv("ADREC_LOG_LEVEL")
    assert run_capturing(monkeypatch, ["etl", "--date", "2024-01-01"])["args"].log_level == "INFO"


ROOT = Path(__file__).resolve().parents[1]


def test_demo_uses_the_packaged_demo_config_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import adrec_spark
    from adrec_spark.config import load_config, resolve_config_file

    monkeypatch.delenv("ADREC_CONF", raising=False)
    monkeypatch.chdir(tmp_path)
    parser, _ = cli.build_parser()
    files = cli.config_files(cli.parse_args(parser, ["demo"]))
    path = resolve_config_file(files[0])
    assert path.is_relative_to(Path(adrec_spark.__file__).parent)   # inside the package, not the cwd
    cfg = load_config(files)
    assert (cfg.train.max_train_rows, cfg.train.epochs, cfg.model.max_length) == (2000, 1, 128)  # conf/demo.yaml
    # a file the user gives (here through the environment) replaces the demo config, as --conf does
    own = tmp_path / "own.yaml"
    own.write_text("train: {epochs: 3}\n")
    monkeypatch.setenv("ADREC_CONF", str(own))
    assert cli.config_files(cli.parse_args(parser, ["demo"])) == [str(own)]


def test_packaged_configs_by_name_and_a_clear_error_for_a_missing_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adrec_spark.config import ConfigError, load_config

    monkeypatch.chdir(tmp_path)
    assert load_config(["cluster"]) == load_config([ROOT / "conf" / "cluster.yaml"])
    assert load_config(["cluster-gpu.yaml"]) == load_config([ROOT / "conf" / "cluster-gpu.yaml"])
    with pytest.raises(ConfigError) as e:
        load_config(["conf/cluster.yaml"])    # a path is a path: no silent swap for the packaged file
    assert str(tmp_path / "conf" / "cluster.yaml") in str(e.value)
    assert "cluster, cluster-gpu, demo, local, movielens" in str(e.value)


def test_config_command_prints_yaml_that_loads_back_with_each_values_origin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        two_files: tuple[Path, Path]) -> None:
    from adrec_spark.config import load_config

    a, _ = two_files
    overrides = ["score.top_k=3", 'mlflow.experiment="yes"', "evaluate.ks=[1, 3]", "train.split.method=dates",
                 "train.split.valid_start=2024-01-10", "train.split.test_start=2024-01-12",
                 "spark.conf={'spark.x': 'a: b', 'spark.y': '1'}", "train.learning_rate=5e-4",
                 "storage.lakehouse=s3a://bucket/lake, with comma"]
    argv = ["--conf", str(a), "config"] + [x for o in overrides for x in ("--set", o)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    printed = tmp_path / "printed.yaml"
    printed.write_text(out)
    assert load_config([printed]) == load_config([a], overrides)
    lines = [line.strip() for line in out.splitlines()]
    assert "top_k: 3  # --set score.top_k=3" in lines
    assert f"popular_pool: 7  # file {a}" in lines
    assert "epochs: 2  # default" in lines
    assert "experiment: 'yes'  # --set mlflow.experiment=\"yes\"" in lines
