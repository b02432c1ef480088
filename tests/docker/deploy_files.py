"""Readers for the files in docker/: Dockerfiles, compose, manifests (parsed, never grepped)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dockerfile_parse import DockerfileParser

from tests.conftest import REPO_ROOT

DOCKER_DIR = REPO_ROOT / "docker"
K8S_DIR = DOCKER_DIR / "k8s"
KSERVE_MANIFEST = K8S_DIR / "kserve-inferenceservice.yaml"
IMAGE_ROOT = "/opt/tritium"  # WORKDIR of both images


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    instructions: list[dict[str, Any]]  # dockerfile-parse's structure, one dict per instruction

    @classmethod
    def read(cls, name: str) -> Dockerfile:
        return cls(DOCKER_DIR / name, _parser(DOCKER_DIR / name).structure)

    def values(self, instruction: str) -> list[str]:
        return [i["value"] for i in self.instructions if i["instruction"] == instruction]

    def base_image(self) -> str:
        (image,) = self.values("FROM")
        return image

    def copies(self) -> list[tuple[list[str], str]]:
        """(sources, destination) of each COPY, flags left out."""
        result = []
        for value in self.values("COPY"):
            words = [w for w in value.split() if not w.startswith("--")]
            result.append((words[:-1], words[-1]))
        return result

    def copied_to(self) -> dict[str, str]:
        """Image path -> repository path of every file copied into the image."""
        workdir = self.values("WORKDIR")[0]
        files: dict[str, str] = {}
        for sources, destination in self.copies():
            target = destination if destination.startswith("/") else f"{workdir}/{destination}"
            for source in sources:
                name = source.rstrip("/").rsplit("/", 1)[-1]
                image_path = f"{target.rstrip('/')}/{name}" if target.endswith("/") else target
                files[image_path.replace("/./", "/")] = source
        return files

    def env(self) -> dict[str, str]:
        return dict(_parser(self.path).envs)

    def args(self) -> dict[str, str]:
        return dict(_parser(self.path).args)

    def exec_form(self, instruction: str) -> list[str]:
        """The JSON array of ENTRYPOINT, or of HEALTHCHECK's CMD."""
        (value,) = self.values(instruction)
        return json.loads(value[value.index("[") :])

    def exposed_ports(self) -> set[int]:
        return {int(port) for value in self.values("EXPOSE") for port in value.split()}

    def user(self) -> str:
        return self.values("USER")[-1]


def _parser(path: Path) -> DockerfileParser:
    # From a file object: given a path, dockerfile-parse may write the file back.
    return DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_manifests() -> dict[Path, list[dict[str, Any]]]:
    """Every Kubernetes manifest of docker/k8s (kustomization.yaml is not one)."""
    return {
        path: load_yaml_documents(path)
        for path in sorted(K8S_DIR.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


def k8s_resources() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> resource, over every manifest."""
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for docs in k8s_manifests().values()
        for doc in docs
    }


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's literal env values (valueFrom entries left out)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
