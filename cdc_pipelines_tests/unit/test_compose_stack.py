"""The docker/ compose stack: validated by a real Compose parser, and checked for what it promises.

The parser is docker-compose 1.29.2 in its own virtualenv (its bundled
compose-spec schema and `docker-compose config`); no Docker engine is needed.
Provision it with `python -m cdc_pipelines_tests.tooling.compose_check --install-only`;
without it these tests fail, they do not skip.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from cdc_pipelines.config import CONFIG_ENV_VAR, load_config
from cdc_pipelines.connect import configs as connector_configs
from cdc_pipelines.settings import ENV_NAMES, ConnectionSettings
from cdc_pipelines_tests.tooling import compose_check

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
CONNECT_DOCKERFILE = DOCKER / "connect" / "Dockerfile"
WORKER_PROPERTIES = DOCKER / "connect" / "connect-distributed.properties"
DAGSTER_DOCKERFILE = DOCKER / "dagster" / "Dockerfile"
DAGSTER_DOCKERIGNORE = DOCKER / "dagster" / "Dockerfile.dockerignore"
WORKSPACE = DOCKER / "dagster" / "workspace.yaml"
DEMO_PIPELINE = DOCKER / "dagster" / "pipeline.yaml"
VAULT_INIT = DOCKER / "vault" / "vault-init.sh"
TRANSFORMS_PROJECT = REPO / "cdc_pipelines" / "connect" / "smt"
SCYLLA_SCHEMA = DOCKER / "scylla" / "schema.cql"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
GRAFANA_DASHBOARD_PROVIDERS = DOCKER / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
GRAFANA_DASHBOARDS = DOCKER / "grafana" / "dashboards"

SCYLLA_CDC_CONNECTOR_ARTIFACT = (
    "com.scylladb:scylla-cdc-source-connector:2.0.3:jar:jar-with-dependencies"
)
DEBEZIUM_JDBC_ARTIFACT = "io.debezium:debezium-connector-jdbc:3.6.0.Final:tar.gz:plugin"

# Service -> image repository it must run (pulled images) ...
PULLED_IMAGES = {
    "scylla": "scylladb/scylla",
    "kafka": "apache/kafka",
    "postgres": "postgres",
    "vault": "hashicorp/vault",
    "pushgateway": "prom/pushgateway",
    "prometheus": "prom/prometheus",
    "grafana": "grafana/grafana",
}
# ... or the Dockerfile it is built from.
BUILT_SERVICES = {
    "connect": CONNECT_DOCKERFILE,
    "dagster-code": DAGSTER_DOCKERFILE,
    "dagster-webserver": DAGSTER_DOCKERFILE,
    "dagster-daemon": DAGSTER_DOCKERFILE,
}
INIT_JOBS = {"scylla-init", "vault-init"}
DAGSTER_SERVICES = ("dagster-code", "dagster-webserver", "dagster-daemon")
# Service -> (host port, container port), published on 127.0.0.1. The host
# ports are the native devstack's, so the same CDC_* defaults reach either stack.
PUBLISHED_PORTS = {
    "scylla": (9042, 9042),
    "kafka": (9092, 9092),
    "connect": (8083, 8083),
    "postgres": (5432, 5432),
    "vault": (8200, 8200),
    "dagster-webserver": (3000, 3000),
    "prometheus": (9090, 9090),
    "pushgateway": (9091, 9091),
    "grafana": (3001, 3000),
}
# Projects that version as MAJOR.MINOR (every such tag is an exact release).
TWO_PART_VERSIONED = {"postgres"}
DAGSTER_STORAGE_ENV = (
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_USER",
    "DAGSTER_PG_PASSWORD",
    "DAGSTER_PG_DB",
)
REPLICATION_METRICS = (
    "cdc_consumer_lag_messages",
    "cdc_consumer_lag_seconds",
    "cdc_reconcile_discrepancies",
    "cdc_reconcile_rows_per_second",
    "cdc_connector_task_failed",
)
# Jars of the Debezium JDBC plugin archive the sink cannot do without.
DEBEZIUM_JARS_KEPT = (
    "debezium-connector-jdbc-3.6.0.Final.jar",
    "debezium-connect-plugins-3.6.0.Final.jar",  # ExtractNewRecordState
    "debezium-sink-3.6.0.Final.jar",
    "postgresql-42.7.11.jar",
)
JAVA_CLASS = re.compile(r"(?:[a-z][a-z0-9_]*\.)+[A-Z][A-Za-z0-9_]*(?:\$[A-Za-z0-9_]+)?")
PROVIDER_REFERENCE = re.compile(r"\$\{([a-z]+):([^:}]+):([^}]+)\}")
# A name holding a secret's value; *_FILE names a path to a file that holds one.
SECRET_NAME = re.compile(r"(PASSWORD|TOKEN|SECRET|SALT)(?!_FILE$)", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def validator() -> compose_check.ComposeValidator:
    try:
        return compose_check.require_validator()
    except compose_check.ComposeCheckError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml as written (anchors merged, ${VAR} not interpolated)."""
    return compose_check.load_compose_document(COMPOSE_FILE)


@pytest.fixture(scope="module")
def resolved(validator: compose_check.ComposeValidator) -> dict[str, Any]:
    """compose.yaml as docker-compose understands it, interpolated from .env.example."""
    result = validator.config(COMPOSE_FILE, ENV_EXAMPLE, quiet=False)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    document: dict[str, Any] = yaml.safe_load(result.stdout)
    return document


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


# ---------------------------------------------------------------- helpers


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path}: line {line!r} is not NAME=value"
            values[name.strip()] = value.strip()
    return values


def read_properties(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def pinning_problem(image: str, *, three_parts: bool = True) -> str | None:
    """Why an image reference is not pinned to one exact release, or None."""
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return f"{image!r} has no tag"
    if tag == "latest":
        return f"{image!r} uses the floating tag 'latest'"
    version = re.match(r"v?(\d+(?:\.\d+)*)", tag)
    if version is None:
        return f"{image!r}: tag {tag!r} does not start with a version number"
    parts = version.group(1).split(".")
    needed = 3 if three_parts else 2
    if len(parts) < needed:
        return f"{image!r}: tag {tag!r} floats (needs {needed} version components)"
    return None


def image_pinning_problem(image: str) -> str | None:
    repository = image.rpartition(":")[0].rsplit("/", 1)[-1]
    return pinning_problem(image, three_parts=repository not in TWO_PART_VERSIONED)


def dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+([A-Z0-9_]+)=(\S+)\s*$", path.read_text(), re.MULTILINE))


def dockerfile_from_images(path: Path) -> list[str]:
    return re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", path.read_text(), re.MULTILINE)


def services(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = document["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def volume_target(service: dict[str, Any], source: str) -> str:
    """Where the service mounts `source` (a named volume or a path relative to docker/)."""
    wanted = source if not source.startswith(".") else str((DOCKER / source).resolve())
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            src, target = str(volume.get("source", "")), str(volume["target"])
        else:
            src, target = volume.split(":")[0], volume.split(":")[1]
        src = str((DOCKER / src).resolve()) if src.startswith(".") else src
        if src == wanted:
            return target
    raise AssertionError(f"no volume with source {source!r} in {service.get('volumes')}")


def host_port_mappings(service: dict[str, Any]) -> set[tuple[str, int, int]]:
    mappings = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            mappings.add(
                (str(port.get("host_ip", "")), int(port["published"]), int(port["target"]))
            )
            continue
        match = re.fullmatch(r"(?:([\d.]+):)?(\d+):(\d+)(?:/tcp)?", str(port))
        assert match, f"unexpected port syntax {port!r}"
        mappings.add((match.group(1) or "", int(match.group(2)), int(match.group(3))))
    return mappings


def command_option(command: list[str], option: str) -> str:
    assert option in command, f"{option} missing from {command}"
    return command[command.index(option) + 1]


def url_password(value: str) -> str | None:
    """The password of a URL written with ${VAR} references, as written, or None."""
    references: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        references.append(match.group(0))
        return f"ref{len(references) - 1}x"

    masked = INTERPOLATION.sub(placeholder, value)
    if "://" not in masked:
        return None
    password = urlsplit(masked).password
    if password is None:
        return None
    return re.sub(r"ref(\d+)x", lambda m: references[int(m.group(1))], password)


def env_names_read_by(node: Any) -> set[str]:
    """Names in Dagster's `{env: NAME}` references anywhere in a YAML document."""
    if isinstance(node, dict):
        if set(node) == {"env"} and isinstance(node["env"], str):
            return {node["env"]}
        return set().union(*(env_names_read_by(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(env_names_read_by(v) for v in node))
    return set()


def plugin_providing(java_class: str) -> str | None:
    """What in the Connect image provides a connector, transform or predicate class."""
    dockerfile = CONNECT_DOCKERFILE.read_text()
    if java_class.startswith("org.apache.kafka.connect."):
        return "the worker (apache/kafka)"
    if java_class.startswith(("io.debezium.connector.jdbc.", "io.debezium.transforms.")):
        return "debezium-connector-jdbc"
    if java_class.startswith("com.scylladb.cdc.debezium.connector."):
        return "scylla-cdc-source-connector"
    if java_class.startswith("io.cdcpipelines."):
        source = TRANSFORMS_PROJECT / "src" / "main" / "java"
        source = source / (java_class.split("$")[0].replace(".", "/") + ".java")
        if source.is_file() and "COPY cdc_pipelines/connect/smt/" in dockerfile:
            return "cdc-transforms"
    return None


def every_string(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from every_string(value)
    elif isinstance(node, list):
        for value in node:
            yield from every_string(value)
    elif isinstance(node, str):
        yield node


# ---------------------------------------------------------------- the real parser


def test_docker_compose_accepts_the_file(validator: compose_check.ComposeValidator) -> None:
    errors = compose_check.compose_config_errors(validator, COMPOSE_FILE, ENV_EXAMPLE)
    assert errors == [], "\n".join(errors)


def test_file_matches_the_published_compose_spec_schema(
    validator: compose_check.ComposeValidator, compose: dict[str, Any]
) -> None:
    errors = compose_check.schema_errors(compose, validator.schema())
    assert errors == [], "\n".join(errors)


def _unknown_healthcheck_key(doc: dict[str, Any]) -> None:
    doc["services"]["kafka"]["healthcheck"]["tset"] = ["CMD", "true"]


def _unknown_condition(doc: dict[str, Any]) -> None:
    doc["services"]["connect"]["depends_on"]["kafka"]["condition"] = "service_ready"


def _dependency_on_missing_service(doc: dict[str, Any]) -> None:
    doc["services"]["connect"]["depends_on"]["zookeeper"] = {"condition": "service_healthy"}


def _undeclared_named_volume(doc: dict[str, Any]) -> None:
    del doc["volumes"]["kafka-data"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_unknown_healthcheck_key, "tset"),
        (_unknown_condition, "service_ready"),
        (_dependency_on_missing_service, "zookeeper"),
        (_undeclared_named_volume, "kafka-data"),
    ],
    ids=["healthcheck-typo", "bad-condition", "missing-dependency", "undeclared-volume"],
)
def test_validator_rejects_broken_variants(
    validator: compose_check.ComposeValidator,
    compose: dict[str, Any],
    tmp_path: Path,
    mutate: Callable[[dict[str, Any]], None],
    expected: str,
) -> None:
    # The same document, unmodified, must pass from the temporary directory, so
    # that the only difference between the two runs is the mutation. Compose
    # checks that build contexts exist: point them back at docker/.
    document = json.loads(json.dumps(compose))
    for service in document["services"].values():
        if "build" in service:
            service["build"]["context"] = str((DOCKER / service["build"]["context"]).resolve())
    baseline = tmp_path / "baseline" / "compose.yaml"
    baseline.parent.mkdir()
    baseline.write_text(yaml.safe_dump(document, sort_keys=False))
    assert compose_check.validate(validator, baseline, ENV_EXAMPLE) == []

    mutate(document)
    broken = tmp_path / "broken" / "compose.yaml"
    broken.parent.mkdir()
    broken.write_text(yaml.safe_dump(document, sort_keys=False))
    errors = compose_check.validate(validator, broken, ENV_EXAMPLE)
    assert errors, f"the validator accepted a compose file with {expected!r}"
    assert expected in "\n".join(errors)


# ---------------------------------------------------------------- images


@pytest.mark.parametrize(
    "image",
    [
        "postgres",
        "postgres:15",
        "apache/kafka:latest",
        "grafana/grafana:12",
        "prom/prometheus:v3.5",
        "scylladb/scylla:stable",
    ],
)
def test_pinning_rule_rejects_floating_references(image: str) -> None:
    assert image_pinning_problem(image) is not None


def test_every_image_is_pinned_to_an_exact_version(compose: dict[str, Any]) -> None:
    problems = []
    for name, service in services(compose).items():
        image = service.get("image")
        if image is None:
            problems.append(f"service {name}: no image")
        elif (problem := image_pinning_problem(image)) is not None:
            problems.append(f"service {name}: {problem}")
    for dockerfile in (CONNECT_DOCKERFILE, DAGSTER_DOCKERFILE):
        images = dockerfile_from_images(dockerfile)
        assert images, f"{dockerfile}: no FROM line"
        for image in images:
            if (problem := image_pinning_problem(image)) is not None:
                problems.append(f"{dockerfile.relative_to(REPO)}: FROM {problem}")
    assert problems == [], "\n".join(problems)


def test_each_role_runs_the_expected_image(compose: dict[str, Any]) -> None:
    svc = services(compose)
    for name, repository in PULLED_IMAGES.items():
        assert name in svc, f"service {name} is missing"
        assert svc[name]["image"].rpartition(":")[0] == repository
        assert "build" not in svc[name]
    assert svc["postgres"]["image"].rpartition(":")[2].split(".")[0] == "15"
    for name, dockerfile in BUILT_SERVICES.items():
        build = svc[name]["build"]
        context = (DOCKER / build["context"]).resolve()
        assert (context / build.get("dockerfile", "Dockerfile")).resolve() == dockerfile
    # Broker and Connect worker run the same Kafka release.
    kafka_version = svc["kafka"]["image"].rpartition(":")[2]
    assert f"apache/kafka:{kafka_version}" in dockerfile_from_images(CONNECT_DOCKERFILE)


# ---------------------------------------------------------------- health and ordering


def test_every_service_has_a_healthcheck_or_is_a_one_shot_init_job(
    compose: dict[str, Any],
) -> None:
    svc = services(compose)
    completed_targets = {
        target
        for service in svc.values()
        for target, dep in (service.get("depends_on") or {}).items()
        if isinstance(dep, dict) and dep.get("condition") == "service_completed_successfully"
    }
    assert completed_targets == INIT_JOBS
    for name, service in svc.items():
        if name in INIT_JOBS:
            assert service.get("restart") == "no", f"init job {name} must not restart"
            assert not service.get("ports"), f"init job {name} publishes ports"
            continue
        check = service.get("healthcheck")
        assert check, f"service {name} has no healthcheck"
        assert not check.get("disable"), f"service {name} disables its healthcheck"
        test = check.get("test")
        assert test and test != ["NONE"], f"service {name}: empty healthcheck test"
        if isinstance(test, list):
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: {test}"


def test_every_dependency_waits_on_a_condition(compose: dict[str, Any]) -> None:
    svc = services(compose)
    for name, service in svc.items():
        depends_on = service.get("depends_on")
        if depends_on is None:
            continue
        assert isinstance(depends_on, dict), f"service {name}: depends_on is a plain list"
        for target, dep in depends_on.items():
            assert target in svc, f"service {name} depends on unknown service {target}"
            condition = (dep or {}).get("condition")
            if target in INIT_JOBS:
                assert condition == "service_completed_successfully", f"{name} -> {target}"
            else:
                assert condition == "service_healthy", f"{name} -> {target}: {condition}"
                assert "healthcheck" in svc[target], f"{name} waits on {target}'s health"


# ---------------------------------------------------------------- Kafka Connect


def test_connect_dockerfile_pins_both_connector_versions() -> None:
    args = dockerfile_args(CONNECT_DOCKERFILE)
    artifacts = set()
    for artifact in re.findall(r'-Dartifact="?([^"\s]+)', CONNECT_DOCKERFILE.read_text()):
        for name, value in args.items():
            artifact = artifact.replace(f"${{{name}}}", value)
        assert "$" not in artifact, f"unresolved build argument in {artifact}"
        artifacts.add(artifact)
    assert SCYLLA_CDC_CONNECTOR_ARTIFACT in artifacts
    assert DEBEZIUM_JDBC_ARTIFACT in artifacts
    # The archive unpacked is the one fetched: same version.
    debezium_version = DEBEZIUM_JDBC_ARTIFACT.split(":")[2]
    archive = f"debezium-connector-jdbc-{debezium_version}-plugin.tar.gz"
    text = CONNECT_DOCKERFILE.read_text().replace("${DEBEZIUM_JDBC_VERSION}", debezium_version)
    assert archive in text


def test_connect_image_keeps_the_jars_the_sink_needs() -> None:
    removal = re.search(r"rm -f ((?:[^\n]|\\\n)+?)\\?\n\s*&&", CONNECT_DOCKERFILE.read_text())
    assert removal, "the Dockerfile no longer trims the Debezium plugin: update this test"
    patterns = removal.group(1).replace("\\", " ").split()
    for jar in DEBEZIUM_JARS_KEPT:
        assert not any(fnmatch.fnmatch(jar, p) for p in patterns), f"{jar} is deleted"
    for jar in ("kafka-clients-4.3.0.jar", "connect-api-4.3.0.jar", "slf4j-api-1.7.36.jar"):
        assert any(fnmatch.fnmatch(jar, p) for p in patterns), f"{jar} would shadow the worker's"


def test_connect_image_provides_every_class_the_project_deploys() -> None:
    constants = {
        value
        for name, value in vars(connector_configs).items()
        if name.isupper() and isinstance(value, str) and JAVA_CLASS.fullmatch(value)
    }
    assert {
        connector_configs.SCYLLA_CONNECTOR_CLASS,
        connector_configs.JDBC_SINK_CONNECTOR_CLASS,
    } <= constants
    missing = sorted(c for c in constants if plugin_providing(c) is None)
    assert missing == [], f"classes no plugin in the Connect image provides: {missing}"
    assert "/plugins/cdc-transforms" in CONNECT_DOCKERFILE.read_text()


def test_demo_connector_configs_run_on_the_stack(
    compose: dict[str, Any], resolved: dict[str, Any]
) -> None:
    svc = services(resolved)
    config = load_config(DEMO_PIPELINE, environ=environment(svc["dagster-code"]))
    props = read_properties(WORKER_PROPERTIES)
    providers = props["config.providers"].split(",")
    vault_path = config.connectors.secrets.vault_path
    keys_line = re.search(r'^keys="([^"]+)"', VAULT_INIT.read_text(), re.MULTILINE)
    assert keys_line, f"{VAULT_INIT.name} names no keys"
    written_keys = set(keys_line.group(1).split())
    deployed = connector_configs.connector_configs(config)
    assert {c.name for c in deployed} >= {config.connectors.source_name}
    for connector in deployed:
        options = connector.config
        classes = [
            value
            for key, value in options.items()
            if key == "connector.class"
            or key.endswith(".converter")
            or re.fullmatch(r"(transforms|predicates)\.[^.]+\.type", key)
        ]
        for java_class in classes:
            assert plugin_providing(java_class), f"{connector.name}: nothing provides {java_class}"
        for key, value in options.items():
            for provider, path, secret_key in PROVIDER_REFERENCE.findall(value):
                assert provider in providers, f"{connector.name}.{key}: provider {provider}"
                assert provider == "vault" and path == vault_path, f"{connector.name}.{key}"
                assert secret_key in written_keys, f"{connector.name}.{key}: key {secret_key}"
        for address in options.get("scylla.cluster.ip.addresses", "").split(","):
            if address:
                host, _, port = address.rpartition(":")
                assert host in svc and port == "9042", address
        if "connection.url" in options:
            url = urlsplit(options["connection.url"].removeprefix("jdbc:"))
            assert url.hostname in svc and url.port == 5432, options["connection.url"]


def test_connect_worker_configuration(compose: dict[str, Any]) -> None:
    props = read_properties(WORKER_PROPERTIES)
    for side in ("key", "value"):
        assert props[f"{side}.converter"] == "org.apache.kafka.connect.json.JsonConverter"
        assert props[f"{side}.converter.schemas.enable"] == "true"
    for topic in ("config", "offset", "status"):
        assert props[f"{topic}.storage.replication.factor"] == "1"
        assert props[f"{topic}.storage.topic"]
    assert urlsplit(props["listeners"]).port == 8083
    assert props["bootstrap.servers"] == "kafka:19092"
    # The plugins are where the Dockerfile puts them.
    assert f"/plugins {props['plugin.path']}" in CONNECT_DOCKERFILE.read_text()
    # Secrets are resolved from Vault only, as the local stack does (no file provider).
    assert props["config.providers"] == "vault"
    assert props["config.providers.vault.class"] == "io.cdcpipelines.connect.VaultConfigProvider"
    assert urlsplit(props["config.providers.vault.param.address"]).hostname in services(compose)
    token_dir = volume_target(services(compose)["connect"], "connect-vault-token")
    assert str(Path(props["config.providers.vault.param.token.file"]).parent) == token_dir
    # The worker's properties file is the one the image starts with.
    assert (
        "COPY docker/connect/connect-distributed.properties /opt/connect/connect-distributed.properties"
        in CONNECT_DOCKERFILE.read_text()
    )


# ---------------------------------------------------------------- services and ports


def test_services_publish_the_native_devstack_ports_on_loopback(
    resolved: dict[str, Any],
) -> None:
    svc = services(resolved)
    for name, (host, container) in PUBLISHED_PORTS.items():
        assert ("127.0.0.1", host, container) in host_port_mappings(svc[name]), name
    published = [
        (name, host) for name, service in svc.items() for _, host, _ in host_port_mappings(service)
    ]
    hosts = [host for _, host in published]
    assert len(hosts) == len(set(hosts)), f"a host port is published twice: {published}"
    assert all(ip == "127.0.0.1" for s in svc.values() for ip, _, _ in host_port_mappings(s))
    # The published ports agree with the project's defaults for the native devstack.
    defaults = ConnectionSettings()
    assert PUBLISHED_PORTS["scylla"][0] == defaults.scylla_port
    assert str(PUBLISHED_PORTS["kafka"][0]) in defaults.kafka_bootstrap_servers
    assert urlsplit(defaults.connect_url).port == PUBLISHED_PORTS["connect"][0]
    assert urlsplit(defaults.postgres_dsn).port == PUBLISHED_PORTS["postgres"][0]
    assert urlsplit(defaults.pushgateway_url).port == PUBLISHED_PORTS["pushgateway"][0]


# ---------------------------------------------------------------- secrets


def test_no_secret_is_written_into_the_compose_file(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    secrets = {k: v for k, v in env_example.items() if SECRET_NAME.search(k)}
    assert len(secrets) >= 5, f"too few secrets in .env.example: {sorted(secrets)}"
    for name, value in secrets.items():
        assert value, f".env.example leaves {name} empty"
        for path in DOCKER.rglob("*"):
            # docker/.env (git-ignored) is where a user's copy of the values belongs.
            if path.is_file() and path not in (ENV_EXAMPLE, DOCKER / ".env"):
                assert value not in path.read_text(errors="replace"), f"{name}'s value in {path}"
    for service_name, service in services(compose).items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                match = INTERPOLATION.fullmatch(value)
                assert match, f"{service_name}.{key} is not a plain ${{VAR}} reference: {value!r}"
                # `:?`: compose refuses to start while the variable is unset or empty.
                assert match.group(2) == ":?", f"{service_name}.{key} may render without it"
                assert match.group(1) in secrets, f"{service_name}.{key}: {match.group(1)}"
            # A password inside a URL must be one required ${VAR:?...} reference too.
            password = url_password(value)
            if password is not None:
                match = INTERPOLATION.fullmatch(password)
                assert match, f"{service_name}.{key}: URL password {password!r} is inline"
                assert match.group(2) == ":?", f"{service_name}.{key}: URL password has a default"
    # Every variable the file reads is documented in the example.
    referenced = {m.group(1) for s in every_string(compose) for m in INTERPOLATION.finditer(s)}
    assert referenced <= set(env_example), sorted(referenced - set(env_example))


def test_compose_refuses_to_render_without_each_secret(
    validator: compose_check.ComposeValidator, env_example: dict[str, str], tmp_path: Path
) -> None:
    for name in (k for k in env_example if SECRET_NAME.search(k)):
        env_file = tmp_path / f"without-{name}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env_example.items() if k != name))
        result = validator.config(COMPOSE_FILE, env_file)
        assert result.returncode != 0, f"compose renders with {name} unset"
        assert name in result.stderr, result.stderr


def test_env_example_documents_copying_it_to_dot_env() -> None:
    text = ENV_EXAMPLE.read_text()
    assert "cp docker/.env.example docker/.env" in text
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


# ---------------------------------------------------------------- Dagster


def test_dagster_services_get_the_project_environment(resolved: dict[str, Any]) -> None:
    svc = services(resolved)
    required = (*ENV_NAMES, CONFIG_ENV_VAR, *DAGSTER_STORAGE_ENV)
    for name in DAGSTER_SERVICES:
        env = environment(svc[name])
        missing = [var for var in required if not env.get(var)]
        assert missing == [], f"{name} lacks {missing}"
        settings = ConnectionSettings.from_env(env)
        assert set(settings.scylla_contact_points) <= set(svc)
        assert settings.scylla_port == 9042
        kafka_host, _, kafka_port = settings.kafka_bootstrap_servers.partition(":")
        assert (
            f"PLAINTEXT://{kafka_host}:{kafka_port}"
            in environment(svc["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
        )
        for url in (settings.connect_url, settings.pushgateway_url, settings.postgres_dsn):
            assert urlsplit(url).hostname in svc, url
        dsn = urlsplit(settings.postgres_dsn)
        postgres_env = environment(svc["postgres"])
        assert (dsn.username, dsn.password, dsn.path) == (
            postgres_env["CDC_PG_USER"],
            postgres_env["CDC_PG_PASSWORD"],
            "/" + postgres_env["CDC_PG_DB"],
        )
        assert env["DAGSTER_PG_HOST"] in svc
        for var in ("DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
            assert env[var] == postgres_env[var], var
        assert volume_target(svc[name], "./dagster/pipeline.yaml") == env[CONFIG_ENV_VAR]
        # Whatever the instance configuration reads is set.
        instance = yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())
        unset = sorted(var for var in env_names_read_by(instance) if not env.get(var))
        assert unset == [], f"{name}: dagster_home/dagster.yaml reads unset {unset}"
        if "DAGSTER_PG_URL" in env:
            pg_url = urlsplit(env["DAGSTER_PG_URL"])
            assert pg_url.scheme == "postgresql+psycopg2"
            assert (
                pg_url.hostname,
                pg_url.port,
                pg_url.username,
                pg_url.password,
                pg_url.path,
            ) == (
                env["DAGSTER_PG_HOST"],
                int(env["DAGSTER_PG_PORT"]),
                env["DAGSTER_PG_USER"],
                env["DAGSTER_PG_PASSWORD"],
                "/" + env["DAGSTER_PG_DB"],
            )


def test_demo_declaration_loads_and_matches_the_scylla_schema(resolved: dict[str, Any]) -> None:
    svc = services(resolved)
    env = environment(svc["dagster-code"])
    config = load_config(DEMO_PIPELINE, environ=env)
    cql = " ".join(SCYLLA_SCHEMA.read_text().split())
    for table in config.tables:
        match = re.search(
            rf"CREATE TABLE IF NOT EXISTS {re.escape(table.source)} \((.*?)\) WITH cdc = \{{'enabled': true",
            cql,
        )
        assert match, f"{table.source} is not created with CDC in {SCYLLA_SCHEMA.name}"
        for column in table.columns:
            assert f"{column.name} {column.type}" in match.group(1), (table.source, column.name)
    secrets = config.connectors.secrets
    assert secrets.provider == "vault"
    assert secrets.vault_path == "secret/data/cdc/connect"
    init = VAULT_INIT.read_text()
    assert 'vault kv put "$secret_path"' in init and "secret/cdc/connect" in init
    # vault-init writes each service's read-only token where only that service mounts it,
    # and no secret into any file.
    for service, volume, token_env in (
        ("connect", "connect-vault-token", "CONNECT_VAULT_TOKEN_FILE"),
        ("dagster-code", "dagster-vault-token", "DAGSTER_VAULT_TOKEN_FILE"),
    ):
        written = re.search(rf'^\w+="\$\{{{token_env}:-([^}}]+)\}}"', init, re.M)
        assert written, f"{VAULT_INIT.name} names no {token_env}"
        init_dir = volume_target(svc["vault-init"], volume)
        assert str(Path(written.group(1)).parent) == init_dir
        assert volume_target(svc[service], volume).endswith(("/vault", "/vault:ro"))
    assert str(Path(env["VAULT_TOKEN_FILE"]).parent) == volume_target(
        svc["dagster-code"], "dagster-vault-token"
    )
    assert "kv get" not in init and "printf '%s=%s" not in init
    sink_url = urlsplit(config.connectors.sink_connection_url.removeprefix("jdbc:"))
    assert (sink_url.hostname, sink_url.path) == ("postgres", "/" + env["CDC_PG_DB"])


def test_webserver_and_daemon_reach_the_code_server_over_grpc(compose: dict[str, Any]) -> None:
    svc = services(compose)
    workspace = yaml.safe_load(WORKSPACE.read_text())
    (entry,) = workspace["load_from"]
    grpc = entry["grpc_server"]
    code_command = svc["dagster-code"]["command"]
    assert grpc["host"] == "dagster-code"
    assert str(grpc["port"]) == command_option(code_command, "--port")
    assert grpc["location_name"] == command_option(code_command, "--location-name")
    assert command_option(code_command, "--module-name") == "cdc_pipelines.definitions"
    assert command_option(code_command, "--attribute") == "defs"
    dockerfile = DAGSTER_DOCKERFILE.read_text()
    for name in ("dagster-webserver", "dagster-daemon"):
        workspace_path = command_option(svc[name]["command"], "--workspace")
        assert workspace_path == "/opt/dagster/app/workspace.yaml"
        assert f"COPY docker/dagster/{WORKSPACE.name}" in dockerfile
    assert "/opt/dagster/app/" in dockerfile


def test_dagster_image_installs_the_project_from_the_repository_root(
    compose: dict[str, Any],
) -> None:
    dockerfile = DAGSTER_DOCKERFILE.read_text()
    assert re.search(r"^RUN pip install (--constraint \S+ )?/project\b", dockerfile, re.MULTILINE)
    home = re.search(r"DAGSTER_HOME=(\S+)", dockerfile)
    assert home, "the image sets no DAGSTER_HOME"
    for name in DAGSTER_SERVICES:
        assert environment(services(compose)[name])["DAGSTER_HOME"] == home.group(1)
    assert "COPY dagster_home/dagster.yaml ${DAGSTER_HOME}/dagster.yaml" in dockerfile
    # Everything the Dockerfile copies passes the build context's ignore file,
    # including the readme that pyproject.toml names (setuptools needs it).
    allowed = {
        line[1:].rstrip("/")
        for line in DAGSTER_DOCKERIGNORE.read_text().splitlines()
        if line.startswith("!")
    }
    pyproject = (REPO / "pyproject.toml").read_text()
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject, re.MULTILINE)
    assert readme, "pyproject.toml names no readme"
    sources = set()
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", dockerfile, re.MULTILINE):
        sources.update(line.split()[:-1])
    assert readme.group(1) in sources
    assert {"pyproject.toml", "cdc_pipelines"} <= sources
    assert sources <= allowed, sorted(sources - allowed)


# ---------------------------------------------------------------- observability


def test_prometheus_scrapes_the_pushgateway_with_honor_labels_and_connect(
    compose: dict[str, Any],
) -> None:
    svc = services(compose)
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        name: [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        for name, job in jobs.items()
    }
    push = [name for name, ts in targets.items() if "pushgateway:9091" in ts]
    assert push, "no scrape job targets pushgateway:9091"
    assert all(jobs[name].get("honor_labels") is True for name in push)
    jmx_port = re.search(
        r"jmx_prometheus_javaagent\.jar=(\d+):", environment(svc["connect"])["KAFKA_OPTS"]
    )
    assert jmx_port, "the connect service runs no JMX exporter agent"
    assert any(f"connect:{jmx_port.group(1)}" in ts for ts in targets.values())
    for ts in targets.values():
        for target in ts:
            host = target.rpartition(":")[0]
            assert host in svc or host == "127.0.0.1", f"scrape target {target} is no service"
    assert volume_target(svc["prometheus"], "./prometheus/prometheus.yml") == command_option(
        [arg for a in svc["prometheus"]["command"] for arg in a.split("=", 1)], "--config.file"
    )


def test_grafana_provisions_prometheus_and_the_replication_dashboard(
    compose: dict[str, Any],
) -> None:
    svc = services(compose)
    (datasource,) = yaml.safe_load(GRAFANA_DATASOURCES.read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and url.port == 9090
    (provider,) = yaml.safe_load(GRAFANA_DASHBOARD_PROVIDERS.read_text())["providers"]
    assert provider["options"]["path"] == volume_target(svc["grafana"], "./grafana/dashboards")
    assert volume_target(svc["grafana"], "./grafana/provisioning") == "/etc/grafana/provisioning"

    dashboards = sorted(GRAFANA_DASHBOARDS.glob("*.json"))
    assert dashboards, "no dashboard JSON"
    dashboard = json.loads(dashboards[0].read_text())
    panels = dashboard["panels"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
    for metric in REPLICATION_METRICS:
        using = [e for e in exprs if re.search(rf"\b{metric}\b", e)]
        assert using, f"no panel shows {metric}"
        assert all("table" in e for e in using), f"{metric} is not broken down by table"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "table" in variables
    assert "table" in variables["table"]["definition"]
