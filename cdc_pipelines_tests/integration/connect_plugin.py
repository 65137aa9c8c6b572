"""Run a class of the project's Connect plugin outside Connect: compile it with a small Java
driver against the devstack's Connect jars and return what the driver prints."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cdc_pipelines.devstack.layout import StackLayout

PLUGIN_SOURCES = (
    Path(__file__).resolve().parents[2]
    / "cdc_pipelines/connect/smt/src/main/java/io/cdcpipelines/connect"
)


def run_driver(tmp_path: Path, source: str, driver: str, *arguments: str) -> list[str]:
    """Compile ``source`` (a file name in the plugin's sources) with ``driver`` (the Java
    source of a public class ``Drive``) and run ``Drive`` with ``arguments``: its lines."""
    javac = shutil.which("javac")
    assert javac, "javac is needed (the devstack builds the Connect plugin with it)"
    jars = StackLayout.from_env().jars / "connect"
    assert (jars / "connect-api-4.3.1.jar").exists(), f"no Connect jars in {jars}; run stack up"
    (tmp_path / "Drive.java").write_text(driver)
    classes = tmp_path / "classes"
    classpath = f"{jars}/*"
    sources = [str(PLUGIN_SOURCES / source), str(tmp_path / "Drive.java")]
    subprocess.run(
        [javac, "-d", str(classes), "-cp", classpath, *sources],
        check=True,
        capture_output=True,
    )
    result = subprocess.run(
        ["java", "-cp", f"{classes}:{classpath}", "Drive", *arguments],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.splitlines()
