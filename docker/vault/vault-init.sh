#!/bin/sh
# One-shot job of the compose stack (service vault-init, hashicorp/vault image):
#  1. store the secrets the connectors and cdc_pipelines need in Vault (KV v2 at
#     secret/): the JDBC sink's PostgreSQL login and the salt of hashed (masked) columns;
#  2. give Kafka Connect and the Dagster services each a token that may only read
#     secret/cdc/*, written to a volume only that service mounts. Connect's
#     VaultConfigProvider resolves ${vault:secret/data/cdc/connect:<key>} with it;
#     the Dagster services read the salt with it (VAULT_TOKEN_FILE).
# No secret is written to a file: Vault holds them, the files hold tokens only.
# The keys are the defaults of pipeline.yaml's connectors.secrets section
# (postgres_user_key, postgres_password_key, mask_salt_key).
set -eu

: "${VAULT_ADDR:?}" "${VAULT_TOKEN:?}"
: "${CDC_SINK_USER:?}" "${CDC_SINK_PASSWORD:?}" "${CDC_MASK_SALT:?}"

secret_path="${CDC_CONNECT_SECRET_PATH:-secret/cdc/connect}"
connect_token_file="${CONNECT_VAULT_TOKEN_FILE:-/vault-tokens/connect/token}"
dagster_token_file="${DAGSTER_VAULT_TOKEN_FILE:-/vault-tokens/dagster/token}"
# uid/gid of `appuser` (the Kafka Connect image's user) and of `dagster` (docker/dagster).
connect_uid="${CONNECT_UID:-1000}"
connect_gid="${CONNECT_GID:-1000}"
dagster_uid="${DAGSTER_UID:-1000}"
dagster_gid="${DAGSTER_GID:-1000}"
keys="postgres.user postgres.password mask.salt"
policy="cdc-read"

vault kv put "$secret_path" \
  postgres.user="$CDC_SINK_USER" \
  postgres.password="$CDC_SINK_PASSWORD" \
  mask.salt="$CDC_MASK_SALT" >/dev/null
echo "vault-init: stored $keys at $secret_path"

printf 'path "secret/data/cdc/*" {\n  capabilities = ["read"]\n}\n' | vault policy write "$policy" - >/dev/null
echo "vault-init: policy $policy reads secret/cdc/* and nothing else"

# write_token FILE OWNER: a renewable token of the read-only policy, owner-only.
write_token() {
  umask 077
  tmp="$(dirname "$1")/.$(basename "$1").tmp"
  vault token create -policy="$policy" -period=768h -orphan -field=token >"$tmp"
  chown "$2" "$tmp"
  chmod 0400 "$tmp"
  mv -f "$tmp" "$1"
  echo "vault-init: wrote a $policy token to $1"
}
write_token "$connect_token_file" "$connect_uid:$connect_gid"
write_token "$dagster_token_file" "$dagster_uid:$dagster_gid"
