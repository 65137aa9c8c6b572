#!/usr/bin/env bash
# First-start initialisation of the compose stack's PostgreSQL (run by the
# official image's entrypoint from /docker-entrypoint-initdb.d, once, on an
# empty data directory). Names and passwords come from the container's
# environment (docker/.env); psql binds them as literals and identifiers.
#
#   <CDC_PG_DB>_owner  NOLOGIN role that owns the replication target database.
#   CDC_PG_USER        cdc_pipelines (DDL, reconciliation reads, repairs).
#   CDC_SINK_USER      the JDBC sink connector (credentials also kept in Vault).
# Both log-in roles are members of the owner role and act as it, so tables made
# by either one (DDL from cdc_pipelines, schema evolution by the sink) are
# usable by both.
#   DAGSTER_PG_USER    owns DAGSTER_PG_DB, Dagster's run/event/schedule storage.
set -euo pipefail

: "${CDC_PG_DB:?}" "${CDC_PG_USER:?}" "${CDC_PG_PASSWORD:?}"
: "${CDC_SINK_USER:?}" "${CDC_SINK_PASSWORD:?}"
: "${DAGSTER_PG_DB:?}" "${DAGSTER_PG_USER:?}" "${DAGSTER_PG_PASSWORD:?}"

psql --no-psqlrc -v ON_ERROR_STOP=1 \
  --username "$POSTGRES_USER" --dbname postgres \
  -v cdc_db="$CDC_PG_DB" \
  -v cdc_owner="${CDC_PG_DB}_owner" \
  -v cdc_user="$CDC_PG_USER" \
  -v cdc_password="$CDC_PG_PASSWORD" \
  -v sink_user="$CDC_SINK_USER" \
  -v sink_password="$CDC_SINK_PASSWORD" \
  -v dagster_db="$DAGSTER_PG_DB" \
  -v dagster_user="$DAGSTER_PG_USER" \
  -v dagster_password="$DAGSTER_PG_PASSWORD" <<'SQL'
CREATE ROLE :"cdc_owner" NOLOGIN;
CREATE ROLE :"cdc_user" LOGIN PASSWORD :'cdc_password' IN ROLE :"cdc_owner";
CREATE ROLE :"sink_user" LOGIN PASSWORD :'sink_password' IN ROLE :"cdc_owner";
ALTER ROLE :"cdc_user" SET role = :'cdc_owner';
ALTER ROLE :"sink_user" SET role = :'cdc_owner';
CREATE DATABASE :"cdc_db" OWNER :"cdc_owner";
REVOKE ALL ON DATABASE :"cdc_db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"cdc_db" TO :"cdc_user", :"sink_user";

CREATE ROLE :"dagster_user" LOGIN PASSWORD :'dagster_password';
CREATE DATABASE :"dagster_db" OWNER :"dagster_user";
REVOKE ALL ON DATABASE :"dagster_db" FROM PUBLIC;
SQL
