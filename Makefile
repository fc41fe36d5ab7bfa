# adrec-spark: `make demo` runs the whole pipeline on the embedded local default, `make test` the tests.
# Both run `setup` first (idempotent: a virtualenv, the locked packages, the Delta jars, a Java check).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.adrec-installed
LOCK   := requirements.lock
# `make setup DELTA_S3_DYNAMODB=1`: also resolve Delta's DynamoDB log store for S3 (several writers per table;
# conf/cluster.yaml turns it on). Its own stamp, so that asking for it re-resolves a folder resolved without it.
DELTA_S3_DYNAMODB ?= 0
ifeq ($(DELTA_S3_DYNAMODB),1)
JARS      := .jars/.resolved-s3-dynamodb
JARS_ARGS := --with-s3-dynamodb
else
JARS      := .jars/.resolved
JARS_ARGS :=
endif

export PYSPARK_PYTHON        := $(CURDIR)/$(BIN)/python
export PYSPARK_DRIVER_PYTHON := $(CURDIR)/$(BIN)/python
export SPARK_LOCAL_IP        ?= 127.0.0.1
export PYTHONUNBUFFERED      := 1

.PHONY: setup java-check lock demo test test-fast lint format bench bench-etl bench-quality cluster-test mlflow-ui clean

setup: java-check $(STAMP) $(JARS)

java-check:
	@command -v java >/dev/null || { echo "Java 17+ is required (Spark 4): install openjdk-17-jre" >&2; exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	  [ "$${v:-0}" -ge 17 ] || { echo "Java 17+ is required (found $$v)" >&2; exit 1; }

# The exact tested set from the lock, then this package alone (its ranges in pyproject.toml are for
# installing the wheel beside other packages).
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $@

# Regenerate the lock from pyproject.toml's ranges with uv (installed into .uv/, not the project's venv):
# versions already locked are kept while they fit; `make lock UPGRADE=1` takes the newest in range.
# One lock for every supported Python and platform (--universal), resolved from the lowest supported Python.
# Then run `make test` and commit pyproject.toml and requirements.lock together.
lock:
	@test -x .uv/bin/uv || { $(PYTHON) -m venv .uv && .uv/bin/python -m pip install -q "uv>=0.13,<0.14"; }
	.uv/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 -o $(LOCK) \
	  $(if $(UPGRADE),--upgrade)

$(JARS): $(STAMP)
	$(BIN)/python -m adrec_spark.jars --dest .jars $(JARS_ARGS)
	@touch .jars/.resolved $@

demo: setup
	$(BIN)/adrec demo

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .

format: setup
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: setup
	$(BIN)/python bench/run.py all

bench-etl: setup
	$(BIN)/python bench/run.py etl

bench-quality: setup
	$(BIN)/python bench/run.py quality

cluster-test: setup
	bash tests/cluster/run_cluster_test.sh

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlartifacts --port 5000

clean:
	rm -rf lakehouse data mlflow.db mlartifacts checkpoints reports spark-warehouse .cluster
