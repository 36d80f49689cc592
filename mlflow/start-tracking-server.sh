#!/usr/bin/env bash
# Start the MLflow tracking server of a medfed study.
#
# Pilot (default): runs and the model registry in a SQLite file, artifacts in a
# local folder, both under MEDFED_MLFLOW_DIR.
#   mlflow/start-tracking-server.sh
# Production: runs and registry in PostgreSQL, artifacts in object storage.
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@db.example.org/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://study-bucket/mlflow \
#   mlflow/start-tracking-server.sh
#
# Artifact proxying is always on (--serve-artifacts): sites and the centre
# read and write model payloads through this server's
# /api/2.0/mlflow-artifacts/ endpoints, so they need an outbound connection
# to this server only, and never credentials for the artifact storage.
# See README.md in this folder for every variable.
set -euo pipefail

DATA_DIR="${MEDFED_MLFLOW_DIR:-$PWD/.medfed/mlflow-server}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$DATA_DIR/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-$DATA_DIR/artifacts}"
WORKERS="${MLFLOW_WORKERS:-2}"

# The mlflow command of the environment medfed is installed in; set MLFLOW_BIN to use another.
MLFLOW_BIN="${MLFLOW_BIN:-$(command -v mlflow || true)}"
if [[ -z "$MLFLOW_BIN" || ! -f "$MLFLOW_BIN" ]]; then
  echo "mlflow command not found: activate medfed's virtual environment (. .venv/bin/activate) or set MLFLOW_BIN" >&2
  exit 2
fi

mkdir -p "$DATA_DIR"

# Keep the server offline and small: no telemetry, and no background job
# runners (MLflow 3 starts them by default; they are not used by medfed).
export MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=true
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

extra=()
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
  extra+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi

exec "$MLFLOW_BIN" server \
  --host "$HOST" \
  --port "$PORT" \
  --workers "$WORKERS" \
  --backend-store-uri "$BACKEND" \
  --artifacts-destination "$ARTIFACTS" \
  --serve-artifacts \
  "${extra[@]}"
