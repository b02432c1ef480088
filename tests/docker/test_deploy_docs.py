"""docs/deploy.md says what the code does: the settings tables and the ports."""

from __future__ import annotations

import re
from dataclasses import fields

from adapter.config import ENV_PREFIX, AdapterConfig
from tests.conftest import REPO_ROOT
from tests.docker.deploy_files import Dockerfile
from tritium.tritonserver import TritonServerOptions

DOC = (REPO_ROOT / "docs" / "deploy.md").read_text()


def table_rows(heading: str) -> dict[str, list[str]]:
    """First column (a `VARIABLE`) -> the other cells, for the table under `heading`."""
    section = DOC.split(heading, 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `"):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def first_code(cell: str) -> str:
    match = re.search(r"`([^`]*)`", cell)
    assert match, cell
    return match.group(1)


def test_adapter_table_lists_every_setting_with_its_default() -> None:
    rows = table_rows("### Adapter image")
    assert set(rows) == {ENV_PREFIX + f.name.upper() for f in fields(AdapterConfig)}
    defaults = AdapterConfig()
    for name in ("port", "max_body_bytes", "max_concurrent_requests", "max_n", "retry_after_s"):
        assert int(first_code(rows[ENV_PREFIX + name.upper()][1])) == getattr(defaults, name)
    assert first_code(rows["TRITIUM_HOST"][1]) == defaults.host
    assert float(first_code(rows["TRITIUM_REQUEST_TIMEOUT_S"][1])) == defaults.request_timeout_s
    assert first_code(rows["TRITIUM_LOG_LEVEL"][1]) == defaults.log_level
    image = Dockerfile.read("Dockerfile.adapter").env()["TRITIUM_TRITON_URLS"]
    assert (
        f"`{image}` in the image (`{defaults.triton_urls[0]}` in the code)"
        in rows["TRITIUM_TRITON_URLS"][1]
    )


def test_triton_table_matches_the_image_and_the_code() -> None:
    rows = table_rows("### Triton image")
    image = Dockerfile.read("Dockerfile.triton").env()
    defaults = {f.name: f.default for f in fields(TritonServerOptions)}
    for variable, name in [
        ("TRITIUM_HTTP_PORT", "http_port"),
        ("TRITIUM_GRPC_PORT", "grpc_port"),
        ("TRITIUM_METRICS_PORT", "metrics_port"),
        ("TRITIUM_TRITON_LOG_VERBOSE", "log_verbose"),
        ("TRITIUM_TRITON_HOST", "host"),
    ]:
        _, in_image, outside = rows[variable]
        assert first_code(outside) == str(defaults[name]), variable
        assert first_code(in_image) == image.get(variable, str(defaults[name])), variable
    assert first_code(rows["TRITIUM_MODEL_REPOSITORY"][1]) == image["TRITIUM_MODEL_REPOSITORY"]


def test_ports_table_and_base_image_match() -> None:
    rows = {}
    for line in DOC.split("## Ports and endpoints", 1)[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].isdigit():
            rows.setdefault(cells[0], []).append(int(cells[1]))
    defaults = {f.name: f.default for f in fields(TritonServerOptions)}
    assert rows == {
        "adapter": [AdapterConfig().port],
        "Triton": [defaults["http_port"], defaults["grpc_port"], defaults["metrics_port"]],
    }
    assert f"`{Dockerfile.read('Dockerfile.triton').base_image()}`" in DOC
    assert f"`{Dockerfile.read('Dockerfile.adapter').base_image()}`" in DOC
