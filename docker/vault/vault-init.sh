#!/bin/sh
# One-shot job of the compose stack (service vault-init, hashicorp/vault image):
#  1. store the JDBC sink's PostgreSQL credentials in Vault (KV v2 at secret/),
#  2. read them back from Vault and write the properties file that Kafka
#     Connect's FileConfigProvider resolves in connector configs, e.g.
#     ${file:/etc/kafka-connect/secrets/postgres.properties:password}.
# Vault stays the source of truth; rerunning the job refreshes the file.
set -eu

: "${VAULT_ADDR:?}" "${VAULT_TOKEN:?}"
: "${CDC_SINK_USER:?}" "${CDC_SINK_PASSWORD:?}" "${CDC_PG_DB:?}"

secret_path="${CDC_SINK_SECRET_PATH:-secret/cdc/postgres-sink}"
secrets_dir="${CONNECT_SECRETS_DIR:-/etc/kafka-connect/secrets}"
# uid/gid of `appuser`, the Kafka Connect image's user.
connect_uid="${CONNECT_UID:-1000}"
connect_gid="${CONNECT_GID:-1000}"
jdbc_url="jdbc:postgresql://postgres:5432/${CDC_PG_DB}"

vault kv put "$secret_path" \
  username="$CDC_SINK_USER" \
  password="$CDC_SINK_PASSWORD" \
  url="$jdbc_url" >/dev/null
echo "vault-init: stored the sink credentials at $secret_path"

umask 077
tmp="$secrets_dir/.postgres.properties.tmp"
{
  printf 'username=%s\n' "$(vault kv get -field=username "$secret_path")"
  printf 'password=%s\n' "$(vault kv get -field=password "$secret_path")"
  printf 'url=%s\n' "$(vault kv get -field=url "$secret_path")"
} >"$tmp"
chown "$connect_uid:$connect_gid" "$tmp"
chmod 0400 "$tmp"
mv -f "$tmp" "$secrets_dir/postgres.properties"
echo "vault-init: wrote $secrets_dir/postgres.properties for Kafka Connect"
