"""Configuration files the devstack writes for its services (all bound to loopback)."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

from cdc_pipelines.devstack.layout import (
    CASSANDRA_STORAGE_PORT,
    CONNECT_PORT,
    CQL_PORT,
    KAFKA_CONTROLLER_PORT,
    KAFKA_PORT,
    LOOPBACK,
    OPENBAO_CLUSTER_PORT,
    OPENBAO_KV_MOUNT,
    OPENBAO_PORT,
    POSTGRES_PASSWORD_GROUP,
    POSTGRES_PORT,
    PUSHGATEWAY_PORT,
)


def cassandra_yaml(data_dir: Path) -> str:
    return f"""\
cluster_name: cdc-devstack
num_tokens: 16
allocate_tokens_for_local_replication_factor: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{LOOPBACK}:{CASSANDRA_STORAGE_PORT}"
listen_address: {LOOPBACK}
rpc_address: {LOOPBACK}
storage_port: {CASSANDRA_STORAGE_PORT}
native_transport_port: {CQL_PORT}
start_native_transport: true
data_file_directories:
  - {data_dir}/data
commitlog_directory: {data_dir}/commitlog
saved_caches_directory: {data_dir}/saved_caches
hints_directory: {data_dir}/hints
cdc_raw_directory: {data_dir}/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
auto_snapshot: false
snapshot_on_duplicate_row_detection: false
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
read_request_timeout: 20000ms
range_request_timeout: 30000ms
write_request_timeout: 10000ms
request_timeout: 30000ms
concurrent_reads: 16
concurrent_writes: 16
user_defined_functions_enabled: false
materialized_views_enabled: false
"""


def cassandra_logback(log_file: Path) -> str:
    return f"""\
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{log_file}</file>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
  <logger name="org.apache.cassandra" level="INFO"/>
</configuration>
"""


def log4j2_xml(log_file: Path) -> str:
    return f"""\
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{log_file}" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Logger name="org.reflections" level="ERROR"/>
    <Logger name="org.hibernate" level="WARN"/>
  </Loggers>
</Configuration>
"""


def kafka_cluster_id() -> str:
    """16 random bytes, URL-safe base64 without padding, not starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def kafka_server_properties(data_dir: Path) -> str:
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{LOOPBACK}:{KAFKA_CONTROLLER_PORT}
listeners=PLAINTEXT://{LOOPBACK}:{KAFKA_PORT},CONTROLLER://{LOOPBACK}:{KAFKA_CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://{LOOPBACK}:{KAFKA_PORT}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data_dir}/data
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=24
num.network.threads=2
num.io.threads=4
"""


def connect_worker_properties(plugin_path: Path, vault_token_file: Path) -> str:
    return f"""\
bootstrap.servers={LOOPBACK}:{KAFKA_PORT}
group.id=cdc-devstack-connect
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=true
value.converter.schemas.enable=true
config.storage.topic=_connect-configs
offset.storage.topic=_connect-offsets
status.storage.topic=_connect-status
config.storage.replication.factor=1
offset.storage.replication.factor=1
status.storage.replication.factor=1
offset.storage.partitions=1
status.storage.partitions=1
offset.flush.interval.ms=5000
scheduled.rebalance.max.delay.ms=0
listeners=http://{LOOPBACK}:{CONNECT_PORT}
rest.advertised.host.name={LOOPBACK}
rest.advertised.port={CONNECT_PORT}
plugin.path={plugin_path}
plugin.discovery=hybrid_warn
connector.client.config.override.policy=All
config.providers=vault
config.providers.vault.class=io.cdcpipelines.connect.VaultConfigProvider
config.providers.vault.param.address=http://{LOOPBACK}:{OPENBAO_PORT}
config.providers.vault.param.token.file={vault_token_file}
"""


# The devstack's salt for hashed (masked) columns; production keeps its own in Vault.
MASK_SALT = "cdc-devstack-salt"


def postgres_hba(current: str) -> str:
    """``pg_hba.conf`` with the members of POSTGRES_PASSWORD_GROUP made to give their password
    over TCP (scram-sha-256), ahead of initdb's trust lines; unchanged when already there."""
    lines = [
        f"host    all             +{POSTGRES_PASSWORD_GROUP}     {address}            scram-sha-256"
        for address in ("127.0.0.1/32", "::1/128")
    ]
    if all(line in current.splitlines() for line in lines):
        return current
    marker = "# cdc-pipelines: password-checked logins (written by 'stack up')"
    return "\n".join([marker, *lines, current])


def postgres_conf(socket_dir: Path) -> str:
    return f"""\
listen_addresses = '{LOOPBACK}'
port = {POSTGRES_PORT}
unix_socket_directories = '{socket_dir}'
max_connections = 200
shared_buffers = 256MB
work_mem = 16MB
maintenance_work_mem = 128MB
synchronous_commit = off
wal_level = replica
max_wal_size = 2GB
checkpoint_timeout = 15min
log_min_messages = warning
log_timezone = 'UTC'
timezone = 'UTC'
"""


def openbao_hcl(home: Path) -> str:
    # OpenBao 2 keeps only integrated storage (raft) of the on-disk backends; a
    # single node is its own leader. No TLS: the listener is on loopback only.
    return f"""\
storage "raft" {{
  path    = "{home}/data"
  node_id = "cdc-devstack"
}}
listener "tcp" {{
  address         = "{LOOPBACK}:{OPENBAO_PORT}"
  cluster_address = "{LOOPBACK}:{OPENBAO_CLUSTER_PORT}"
  tls_disable     = true
}}
api_addr     = "http://{LOOPBACK}:{OPENBAO_PORT}"
cluster_addr = "https://{LOOPBACK}:{OPENBAO_CLUSTER_PORT}"
ui           = false
log_level    = "info"
"""


def openbao_read_policy(secret_path: str) -> str:
    """A read-only policy on ``secret_path`` (KV v2; ``cdc/*`` for every secret under cdc/),
    and on the mount lookup that maps ``secret/cdc/connect`` to its API path."""
    return f"""\
path "{OPENBAO_KV_MOUNT}/data/{secret_path}" {{
  capabilities = ["read"]
}}
path "sys/internal/ui/mounts/{OPENBAO_KV_MOUNT}/*" {{
  capabilities = ["read"]
}}
"""


PROMETHEUS_SCRAPE_INTERVAL = "5s"


def prometheus_yml(rule_files: list[Path]) -> str:
    rules = "".join(f"  - {json.dumps(str(path))}\n" for path in rule_files)
    return f"""\
# Written by 'cdc-pipelines stack up'; edits are overwritten.
global:
  scrape_interval: {PROMETHEUS_SCRAPE_INTERVAL}
  evaluation_interval: {PROMETHEUS_SCRAPE_INTERVAL}
rule_files:{"" if rules else " []"}
{rules}scrape_configs:
  # honor_labels keeps the pushed job/instance/table labels instead of the
  # Pushgateway's own.
  - job_name: pushgateway
    honor_labels: true
    static_configs:
      - targets: ["{LOOPBACK}:{PUSHGATEWAY_PORT}"]
"""
