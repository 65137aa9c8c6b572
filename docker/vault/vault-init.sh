#!/bin/sh
# One-shot job of the compose stack (service vault-init, hashicorp/vault image):
#  1. store the secrets Kafka Connect's connectors need in Vault (KV v2 at secret/):
#     the JDBC sink's PostgreSQL login and the salt of hashed (masked) columns;
#  2. read them back from Vault and write the properties file that Connect's
#     FileConfigProvider resolves in connector configs, e.g.
#     ${file:/etc/kafka-connect/secrets/postgres.properties:postgres.password}.
# The keys are the defaults of pipeline.yaml's connectors.secrets section
# (postgres_user_key, postgres_password_key, mask_salt_key).
# Vault stays the source of truth; rerunning the job refreshes the file.
set -eu

: "${VAULT_ADDR:?}" "${VAULT_TOKEN:?}"
: "${CDC_SINK_USER:?}" "${CDC_SINK_PASSWORD:?}" "${CDC_MASK_SALT:?}"

secret_path="${CDC_CONNECT_SECRET_PATH:-secret/cdc/connect}"
secrets_file="${CONNECT_SECRETS_FILE:-/etc/kafka-connect/secrets/postgres.properties}"
# uid/gid of `appuser`, the Kafka Connect image's user.
connect_uid="${CONNECT_UID:-1000}"
connect_gid="${CONNECT_GID:-1000}"
keys="postgres.user postgres.password mask.salt"

vault kv put "$secret_path" \
  postgres.user="$CDC_SINK_USER" \
  postgres.password="$CDC_SINK_PASSWORD" \
  mask.salt="$CDC_MASK_SALT" >/dev/null
echo "vault-init: stored $keys at $secret_path"

umask 077
tmp="$(dirname "$secrets_file")/.$(basename "$secrets_file").tmp"
: >"$tmp"
for key in $keys; do
  printf '%s=%s\n' "$key" "$(vault kv get -field="$key" "$secret_path")" >>"$tmp"
done
chown "$connect_uid:$connect_gid" "$tmp"
chmod 0400 "$tmp"
mv -f "$tmp" "$secrets_file"
echo "vault-init: wrote $secrets_file for Kafka Connect"
