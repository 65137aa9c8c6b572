"""Docker-less devstack: the pipeline's real services on loopback for development and CI.

PostgreSQL (Debian binaries), Apache Cassandra 5 (CQL endpoint standing in for
ScyllaDB), Kafka (KRaft) and a Kafka Connect worker (Maven Central jars), and the
Prometheus Pushgateway (Debian package). ``cdc-pipelines stack up|down|status|env``.
"""
