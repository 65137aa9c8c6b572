"""Validate ``docker/compose.yaml`` with a real Compose parser, without a Docker engine.

The validator is docker-compose 1.29.2 from PyPI (the last Python release of
Compose) in a virtualenv of its own under ``~/.cache/cdc-pipelines/compose-venv``:
it needs PyYAML < 6, which the project's environment cannot hold. Two checks:
the compose-spec JSON schema that ships inside that package (applied with the
project's ``jsonschema``), and ``docker-compose config -q``, which also
interpolates ``${VAR}`` from an env file and checks cross-references.

    python -m cdc_pipelines_tests.tooling.compose_check                 # install if missing, validate
    python -m cdc_pipelines_tests.tooling.compose_check --install-only  # provisioning step for CI
    python -m cdc_pipelines_tests.tooling.compose_check --no-install    # validate, never install
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft201909Validator

from cdc_pipelines.errors import CdcPipelinesError

COMPOSE_VERSION = "1.29.2"
# The validator's whole environment, pinned (what pip resolved for
# docker-compose 1.29.2 on CPython 3.11 and 3.12). setuptools provides the
# `distutils` that docker-compose imports, which Python 3.12 no longer has.
COMPOSE_REQUIREMENTS = (
    f"docker-compose=={COMPOSE_VERSION}",
    "attrs==26.1.0",
    "bcrypt==5.0.0",
    "certifi==2026.10.19.post1",
    "cffi==2.1.1",
    "charset-normalizer==3.5.3",
    "cryptography==50.0.2",
    "distro==1.9.0",
    "docker==7.2.0",
    "dockerpty==0.4.1",
    "docopt==0.6.2",
    "idna==3.20",
    "invoke==3.0.3",
    "jsonschema==3.2.0",
    "paramiko==5.1.0",
    "pycparser==3.12",
    "PyNaCl==1.6.2",
    "pyrsistent==0.20.0",
    "python-dotenv==0.21.1",
    "PyYAML==5.4.1",
    "requests==2.34.2",
    "setuptools==80.9.0",
    "six==1.17.0",
    "texttable==1.7.2",
    "urllib3==2.8.0",
    "websocket-client==0.59.0",
)
# PyYAML 5.4.1 has no wheel for current Pythons and its sdist does not build
# with Cython 3. Given as PIP_CONSTRAINT, these pins also reach pip's isolated
# build environment.
BUILD_CONSTRAINTS = ("Cython==0.29.37", "setuptools==80.9.0", "wheel==0.45.1")

VENV_ENV_VAR = "CDC_COMPOSE_VENV"
MARKER_FILE = "cdc-pipelines-compose-check.json"
SCHEMA_IN_PACKAGE = Path("compose", "config", "compose_spec.json")
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_COMPOSE_FILE = REPO_ROOT / "docker" / "compose.yaml"
DEFAULT_ENV_FILE = REPO_ROOT / "docker" / ".env.example"
INSTALL_TIMEOUT_S = 900
CONFIG_TIMEOUT_S = 120

Log = Callable[[str], None]


class ComposeCheckError(CdcPipelinesError):
    """The Compose validator is missing or could not be installed, or a check could not run."""

    exit_code = 2


def default_venv() -> Path:
    """``$CDC_COMPOSE_VENV``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)``/cdc-pipelines/compose-venv``."""
    override = os.environ.get(VENV_ENV_VAR)
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cdc-pipelines" / "compose-venv"


def install_command() -> str:
    """The command that provisions the validator, for error messages and docs."""
    return f"{sys.executable} -m cdc_pipelines_tests.tooling.compose_check --install-only"


def _fingerprint() -> str:
    text = "\n".join((*COMPOSE_REQUIREMENTS, "--", *BUILD_CONSTRAINTS))
    return hashlib.sha256(text.encode()).hexdigest()


def _bin_dir(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin")


@dataclass(frozen=True)
class ComposeValidator:
    """An installed docker-compose: its executable and the compose-spec schema it ships."""

    venv: Path
    executable: Path
    schema_path: Path

    def schema(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.schema_path.read_text(encoding="utf-8"))
        return loaded

    def config(
        self, compose_file: Path, env_file: Path, *, quiet: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``docker-compose config`` on the file; ``${VAR}`` come from ``env_file`` only.

        The caller's environment is not passed on (only PATH and HOME), so a
        variable exported in a shell cannot hide a missing entry in the env file.
        """
        command = [
            str(self.executable),
            "--env-file",
            str(env_file.resolve()),
            "-f",
            str(compose_file.resolve()),
            "config",
        ]
        if quiet:
            command.append("-q")
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(Path.home())}
        try:
            return subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=env,
                timeout=CONFIG_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ComposeCheckError(f"{self.executable} could not run: {exc}") from None


def find_validator(venv: Path | None = None) -> ComposeValidator | None:
    """The validator installed at ``venv`` by :func:`install_validator`, or ``None``."""
    venv = default_venv() if venv is None else venv
    executable = _bin_dir(venv) / "docker-compose"
    marker = venv / MARKER_FILE
    if not executable.is_file() or not marker.is_file():
        return None
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, Mapping) or recorded.get("fingerprint") != _fingerprint():
        return None
    schema_path = Path(str(recorded.get("schema", "")))
    if not schema_path.is_file():
        return None
    return ComposeValidator(venv=venv, executable=executable, schema_path=schema_path)


def require_validator(venv: Path | None = None) -> ComposeValidator:
    """The installed validator; a :class:`ComposeCheckError` saying how to install it otherwise."""
    venv = default_venv() if venv is None else venv
    validator = find_validator(venv)
    if validator is None:
        raise ComposeCheckError(
            f"docker-compose {COMPOSE_VERSION} (the compose-file validator) is not installed "
            f"at {venv} (or was installed with other pins); provision it with: "
            f"{install_command()}"
        )
    return validator


def _run(command: Sequence[str], env: Mapping[str, str], what: str) -> str:
    try:
        result = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            env=dict(env),
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ComposeCheckError(f"{what} failed: {exc}") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise ComposeCheckError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


def _reports_version(executable: Path) -> bool:
    """Whether the executable still runs (a virtualenv breaks when its base Python goes away)."""
    try:
        result = subprocess.run(
            [str(executable), "version", "--short"],
            capture_output=True,
            text=True,
            timeout=CONFIG_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout.strip() == COMPOSE_VERSION


def install_validator(
    venv: Path | None = None, python: str | None = None, log: Log = print
) -> ComposeValidator:
    """Create the validator's virtualenv and install the pinned docker-compose; idempotent.

    A virtualenv that already holds exactly these pins is left alone; one with
    other pins, or a broken one, is rebuilt from scratch.
    """
    venv = default_venv() if venv is None else venv
    existing = find_validator(venv)
    if existing is not None and _reports_version(existing.executable):
        log(f"compose-check: docker-compose {COMPOSE_VERSION} already installed at {venv}")
        return existing
    if venv.exists():
        log(f"compose-check: replacing the incomplete or outdated virtualenv at {venv}")
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    log(f"compose-check: installing docker-compose {COMPOSE_VERSION} into {venv}")
    env = dict(os.environ)
    _run([python or sys.executable, "-m", "venv", str(venv)], env, "creating the virtualenv")
    venv_python = str(_bin_dir(venv) / "python")
    with tempfile.TemporaryDirectory(prefix="compose-check-") as tmp:
        constraints = Path(tmp, "build-constraints.txt")
        constraints.write_text("\n".join(BUILD_CONSTRAINTS) + "\n", encoding="utf-8")
        requirements = Path(tmp, "requirements.txt")
        requirements.write_text("\n".join(COMPOSE_REQUIREMENTS) + "\n", encoding="utf-8")
        env["PIP_CONSTRAINT"] = str(constraints)
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        _run(
            [venv_python, "-m", "pip", "install", "--quiet", "-r", str(requirements)],
            env,
            f"pip install docker-compose=={COMPOSE_VERSION}",
        )
    executable = _bin_dir(venv) / "docker-compose"
    version_text = _run([str(executable), "version", "--short"], env, "docker-compose version")
    if version_text.strip() != COMPOSE_VERSION:
        raise ComposeCheckError(
            f"{executable} reports version {version_text.strip()!r}, expected {COMPOSE_VERSION}"
        )
    located = _run(
        [venv_python, "-c", "import compose, os; print(os.path.dirname(compose.__file__))"],
        env,
        "locating the compose package",
    )
    schema_path = Path(located.strip()).parent / SCHEMA_IN_PACKAGE
    if not schema_path.is_file():
        raise ComposeCheckError(f"docker-compose {COMPOSE_VERSION} ships no {schema_path}")
    marker = {"fingerprint": _fingerprint(), "schema": str(schema_path)}
    (venv / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    log(f"compose-check: installed docker-compose {COMPOSE_VERSION} at {executable}")
    return ComposeValidator(venv=venv, executable=executable, schema_path=schema_path)


def load_compose_document(compose_file: Path) -> dict[str, Any]:
    """The compose file as YAML (anchors and ``<<`` merges resolved, ``${VAR}`` left as written)."""
    try:
        document = yaml.safe_load(compose_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ComposeCheckError(f"{compose_file}: no such file") from None
    except yaml.YAMLError as exc:
        raise ComposeCheckError(f"{compose_file}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ComposeCheckError(f"{compose_file}: a compose file is a mapping with 'services'")
    return document


def schema_errors(document: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Every violation of the compose-spec schema, as ``path: message`` lines.

    Only structure is checked here: the schema's ``duration``/``ports`` formats
    are Compose's own and are checked by ``docker-compose config``.
    """
    validator = Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.path])
    return [
        f"{'.'.join(str(p) for p in error.path) or '(top level)'}: {error.message}"
        for error in errors
    ]


def compose_config_errors(
    validator: ComposeValidator, compose_file: Path, env_file: Path
) -> list[str]:
    """What ``docker-compose config -q`` rejects, one message per line (empty when valid)."""
    result = validator.config(compose_file, env_file, quiet=True)
    if result.returncode == 0:
        return []
    message = (result.stderr or result.stdout).strip() or f"exit code {result.returncode}"
    return [f"docker-compose config: {line}" for line in message.splitlines() if line.strip()]


def validate(
    validator: ComposeValidator,
    compose_file: Path = DEFAULT_COMPOSE_FILE,
    env_file: Path = DEFAULT_ENV_FILE,
) -> list[str]:
    """Schema errors, then Compose's own errors; an empty list means the file is valid."""
    if not env_file.is_file():
        raise ComposeCheckError(f"{env_file}: no such env file")
    document = load_compose_document(compose_file)
    return schema_errors(document, validator.schema()) + compose_config_errors(
        validator, compose_file, env_file
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cdc_pipelines_tests.tooling.compose_check",
        description=(
            f"Validate a compose file with docker-compose {COMPOSE_VERSION} "
            "(its compose-spec schema and `config -q`), installing it first if missing."
        ),
    )
    parser.add_argument("--compose-file", type=Path, default=DEFAULT_COMPOSE_FILE)
    parser.add_argument(
        "--env-file",
        type=Path,
        default=DEFAULT_ENV_FILE,
        help="variables for ${VAR} interpolation (default: docker/.env.example)",
    )
    parser.add_argument("--venv", type=Path, default=None, help=f"default: {default_venv()}")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--install-only", action="store_true", help="install and stop")
    mode.add_argument("--no-install", action="store_true", help="fail if not installed")
    args = parser.parse_args(argv)

    try:
        if args.no_install:
            validator = require_validator(args.venv)
        else:
            validator = install_validator(args.venv)
        if args.install_only:
            return 0
        errors = validate(validator, args.compose_file, args.env_file)
    except ComposeCheckError as exc:
        print(f"compose-check: {exc}", file=sys.stderr)
        return exc.exit_code
    if errors:
        print(f"compose-check: {args.compose_file} is invalid:", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    print(f"compose-check: {args.compose_file} is valid (docker-compose {COMPOSE_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
