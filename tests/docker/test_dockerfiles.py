"""The Dockerfiles agree with the code: copied files exist, ports, variables, probes, pins."""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import fields

import pytest

import adapter.cli
from adapter.config import ENV_PREFIX, AdapterConfig
from adapter.settings import env_vars
from tests.conftest import REPO_ROOT
from tests.docker.deploy_files import DOCKER_DIR, IMAGE_ROOT, Dockerfile
from tritium.serve_options import ServeOptions
from tritium.tritonserver import TritonServerOptions

# NGC release -> the Triton version inside it (NVIDIA's support matrix).
NGC_TRITON_VERSIONS = {"24.10": "2.51.0"}
# nvidia-pytriton release (pyproject's `server` extra) -> the Triton it bundles.
PYTRITON_TRITON_VERSIONS = {"0.7.0": "2.51.0"}
DOCKERFILES = ["Dockerfile.triton", "Dockerfile.adapter"]


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def requirement_names(requirements: list[str]) -> dict[str, str]:
    """name -> the requirement line, for simple `name[extras]<spec>` requirements."""
    names = {}
    for line in requirements:
        match = re.match(r"\s*([A-Za-z0-9_.-]+)", line)
        assert match, line
        names[match.group(1).lower()] = line
    return names


def triton_defaults() -> dict[str, object]:
    return {f.name: f.default for f in fields(TritonServerOptions)}


def serve_defaults() -> dict[str, object]:
    return {f.name: f.default for f in fields(ServeOptions)}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_file_exists_and_is_in_the_build_context(name: str) -> None:
    dockerfile = Dockerfile.read(name)
    ignore = (DOCKER_DIR / f"{name}.dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for sources, _ in dockerfile.copies():
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"{name} copies {source}, which does not exist"
            top = source.rstrip("/").split("/")[0]
            assert any(fnmatch.fnmatch(top, pattern) for pattern in allowed), (
                f"{name} copies {source} but {name}.dockerignore leaves it out of the context"
            )
    # setuptools needs every package directory pyproject.toml lists.
    copied = {source.rstrip("/") for sources, _ in dockerfile.copies() for source in sources}
    for package in pyproject()["tool"]["setuptools"]["packages"]:
        assert package.split(".")[0] in copied, f"{name} does not copy package {package}"
    assert {"pyproject.toml", "README.md"} <= copied


@pytest.mark.parametrize(
    ("name", "probe"), [("Dockerfile.triton", "triton"), ("Dockerfile.adapter", "adapter")]
)
def test_entrypoint_and_healthcheck_are_copied_scripts(name: str, probe: str) -> None:
    dockerfile = Dockerfile.read(name)
    copied = dockerfile.copied_to()
    (entrypoint,) = dockerfile.exec_form("ENTRYPOINT")
    assert entrypoint in copied, f"ENTRYPOINT {entrypoint} is not copied into the image"
    assert os.access(REPO_ROOT / copied[entrypoint], os.X_OK), (
        f"{copied[entrypoint]} is not executable"
    )
    healthcheck = dockerfile.exec_form("HEALTHCHECK")
    assert healthcheck[1] in copied and healthcheck[2:] == [probe]
    # Non-root: a numeric UID other than 0, so Kubernetes' runAsNonRoot can verify it.
    assert dockerfile.user().isdigit() and int(dockerfile.user()) != 0
    assert dockerfile.values("WORKDIR") == [IMAGE_ROOT]


def test_triton_image_pins_the_ngc_release_of_the_bundled_tritonserver() -> None:
    image = Dockerfile.read("Dockerfile.triton").base_image()
    match = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-py3", image)
    assert match, f"expected a pinned nvcr.io/nvidia/tritonserver:<YY.MM>-py3, got {image}"
    server_extra = requirement_names(pyproject()["project"]["optional-dependencies"]["server"])
    pytriton_version = server_extra["nvidia-pytriton"].split("==")[1]
    assert NGC_TRITON_VERSIONS[match.group(1)] == PYTRITON_TRITON_VERSIONS[pytriton_version]


def test_triton_image_installs_cuda_torch_at_the_pyproject_version() -> None:
    dockerfile = Dockerfile.read("Dockerfile.triton")
    engine = requirement_names(pyproject()["project"]["optional-dependencies"]["engine"])
    assert engine["torch"] == f"torch=={dockerfile.args()['TORCH_VERSION']}"
    runs = " ".join(dockerfile.values("RUN"))
    assert 'pip install "torch==${TORCH_VERSION}"' in runs
    assert 'pip install ".[engine]"' in runs  # the rest of the engine extra, as pyproject says


def test_adapter_image_installs_no_torch() -> None:
    dockerfile = Dockerfile.read("Dockerfile.adapter")
    base = requirement_names(pyproject()["project"]["dependencies"])
    assert not {"torch", "triton", "transformers", "nvidia-pytriton"} & set(base)
    runs = dockerfile.values("RUN")
    assert any(
        run.startswith("pip install . ")
        or run == "pip install ."
        or run.startswith("pip install .\n")
        for run in runs
    )
    assert "slim" in dockerfile.base_image()


def test_triton_image_ports_and_variables_match_tritium_serve() -> None:
    dockerfile = Dockerfile.read("Dockerfile.triton")
    env = dockerfile.env()
    defaults = triton_defaults()
    serve = serve_defaults()
    ports = {
        "TRITIUM_HTTP_PORT": "http_port",
        "TRITIUM_GRPC_PORT": "grpc_port",
        "TRITIUM_METRICS_PORT": "metrics_port",
    }
    for variable, name in ports.items():
        assert int(env[variable]) == defaults[name] == serve[name], variable
    assert dockerfile.exposed_ports() == {int(env[v]) for v in ports}
    assert env["TRITIUM_TRITON_HOST"] == "0.0.0.0"  # reachable from outside the container
    assert env["TRITONSERVER"] == "/opt/tritonserver/bin/tritonserver"
    assert env["TRITIUM_MODEL_REPOSITORY"] == "/models"
    # Each is a variable `tritium serve` reads for one of its flags (tritium serve --help).
    serve_variables = set(env_vars(ServeOptions).values())
    assert {v for v in env if v.startswith(ENV_PREFIX)} <= serve_variables


def test_adapter_image_variables_are_adapter_settings() -> None:
    dockerfile = Dockerfile.read("Dockerfile.adapter")
    env = {k: v for k, v in dockerfile.env().items() if k.startswith(ENV_PREFIX)}
    settings = {ENV_PREFIX + f.name.upper() for f in fields(AdapterConfig)}
    assert set(env) <= settings, f"not adapter settings: {set(env) - settings}"
    config = AdapterConfig.from_env(env)
    assert dockerfile.exposed_ports() == {config.port} == {AdapterConfig().port}
    assert config.host == "0.0.0.0"


def test_every_adapter_flag_has_its_variable() -> None:
    """The images document TRITIUM_<FLAG> for every `python -m adapter --<flag>`."""
    parser = __import__("argparse").ArgumentParser()
    adapter.cli.add_arguments(parser)
    settings = {f.name for f in fields(AdapterConfig)}
    for dest in vars(parser.parse_args([])):
        assert adapter.cli._LIST_FLAGS.get(dest, dest) in settings, dest
