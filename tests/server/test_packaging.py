"""The wheel enables the extension where it is installed and carries the event schema."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from nanny_io.serverext import KERNEL_DIED_SCHEMA_ID, NannyIOExtension, bridge

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "etc/jupyter/jupyter_server_config.d/nanny_io.json"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    builders = pytest.importorskip("hatchling.builders.wheel")
    out = tmp_path_factory.mktemp("wheel")
    path = next(iter(builders.WheelBuilder(str(ROOT)).build(directory=str(out))))
    return zipfile.ZipFile(path)


def test_the_wheel_enables_the_extension(wheel: zipfile.ZipFile, tmp_path: Path) -> None:
    (config,) = [n for n in wheel.namelist() if n.endswith(CONFIG)]
    assert config.split("/", 2)[1:] == ["data", CONFIG], "shared data, installed under the prefix"
    assert json.loads(wheel.read(config)) == {
        "ServerApp": {"jpserver_extensions": {"nanny_io.serverext": True}}
    }
    # jupyter_server reads the same conf.d files from each config dir; the user's is simplest.
    conf_d = tmp_path / "config" / "jupyter_server_config.d"
    conf_d.mkdir(parents=True)
    (conf_d / "nanny_io.json").write_bytes(wheel.read(config))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter_server", "extension", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    listing = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    mine = listing.split(f"Config dir: {tmp_path / 'config'}", 1)[1].split("Config dir:", 1)[0]
    assert "nanny_io.serverext enabled" in mine, listing
    assert re.search(r"nanny_io\.serverext .*OK", mine), "it imports and validates"


def test_the_wheel_carries_the_event_schema(wheel: zipfile.ZipFile) -> None:
    name = "nanny_io/serverext/events/kernel_died.yaml"
    schema = yaml.safe_load(wheel.read(name))
    assert schema["$id"] == KERNEL_DIED_SCHEMA_ID
    assert bridge.KERNEL_DIED_SCHEMA.read_bytes() == wheel.read(name)
    assert NannyIOExtension.name == "nanny_io"
