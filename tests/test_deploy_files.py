"""Checks of the GPU-cluster deployment files that can run without a cluster or Docker.

* every YAML under docker/ parses;
* the KubeRay manifest follows the RayCluster v1 schema of the KubeRay version it names
  (v1.7.0): a hand-written subset of the CRD (field names, required fields, types) and the
  operator's own spec validation rules (ray-operator/controllers/ray/utils/validation.go);
* the cluster-launcher config passes Ray's own launcher checks (``prepare_config`` +
  ``validate_config``: what ``ray up`` runs before it talks to the cloud);
* the Dockerfile installs the package with the README's install line (the CUDA torch aside),
  and the Ray version, image names and Python version agree across the files.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
LAUNCHER = DOCKER / "ray-cluster.yaml"
MANIFEST = DOCKER / "kuberay-raycluster.yaml"
GPU_CONFIG = ROOT / "configs" / "gpu-7b-ties.yaml"

KUBERAY_VERSION = "v1.7.0"


def _load_all(p: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(p.read_text()) if d is not None]


def _raycluster() -> dict[str, Any]:
    docs = [d for d in _load_all(MANIFEST) if d.get("kind") == "RayCluster"]
    assert len(docs) == 1, "the manifest must hold exactly one RayCluster"
    return docs[0]


# ----------------------------------------------------------------------------- Dockerfile


def _dockerfile_args() -> dict[str, str]:
    """Default values of every ARG (later declarations win, as after FROM)."""
    out: dict[str, str] = {}
    for m in re.finditer(r"^ARG\s+(\w+)=(\S+)", DOCKERFILE.read_text(), re.M):
        out[m.group(1)] = m.group(2)
    return out


def _dockerfile_runs() -> list[str]:
    """RUN instructions with line continuations joined and ARG defaults substituted."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    args = _dockerfile_args()
    runs = []
    for line in text.splitlines():
        if line.startswith("RUN "):
            cmd = line[4:]
            for k, v in args.items():
                cmd = cmd.replace("${" + k + "}", v).replace("$" + k, v)
            runs.append(cmd)
    return runs


def _dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for tok in shlex.split(line[4:]):
                k, _, v = tok.partition("=")
                env[k] = v
    return env


def _readme_install() -> list[str]:
    first = (ROOT / "README.md").read_text().splitlines()[0]
    cmd = first.split("&&")[0].strip()
    assert cmd.startswith("pip install"), f"README's first line should start with the install command: {first!r}"
    return shlex.split(cmd)


def test_dockerfile_installs_the_package_like_the_readme() -> None:
    readme = _readme_install()
    pkg = [shlex.split(r) for r in _dockerfile_runs() if "pip install" in r and "-e" in shlex.split(r)]
    assert len(pkg) == 1, f"expected one RUN that pip-installs the package, got {pkg}"
    assert pkg[0] == readme, f"Dockerfile installs {pkg[0]} but the README says {readme}"


def test_dockerfile_installs_cuda_torch_of_the_same_version_first() -> None:
    runs = _dockerfile_runs()
    torch_pin = next(t for t in _readme_install() if t.startswith("torch=="))
    i_cuda = next(i for i, r in enumerate(runs) if "download.pytorch.org/whl/cu" in r)
    i_pkg = next(i for i, r in enumerate(runs) if "-e" in shlex.split(r) and "pip install" in r)
    assert i_cuda < i_pkg, "the CUDA torch must be installed before the package (pip then keeps it)"
    cuda_run = shlex.split(runs[i_cuda])
    assert torch_pin in cuda_run, f"CUDA torch {cuda_run} does not pin the README's {torch_pin}"
    idx = next(t for t in cuda_run if "download.pytorch.org" in t)
    assert cuda_run[cuda_run.index(idx) - 1] == "--index-url", "use --index-url so only the CUDA build can be picked"
    assert re.search(r"/whl/cu\d{3}$", idx), idx


def test_dockerfile_base_env_and_user() -> None:
    text = DOCKERFILE.read_text()
    args = _dockerfile_args()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    for k, v in args.items():
        base = base.replace("${" + k + "}", v)
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(cu\d+)", base)
    assert m, f"unexpected base image {base}"
    assert m.group(4) == args["CUDA_TAG"], "the base image's CUDA and torch's CUDA index must agree"
    # Python of the image satisfies the project's requires-python
    import tomllib

    req = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    lo = tuple(int(x) for x in re.search(r">=\s*(\d+)\.(\d+)", req).groups())
    assert (int(m.group(2)), int(m.group(3))) >= lo
    env = _dockerfile_env()
    assert env.get("RAY_USAGE_STATS_ENABLED") == "0"  # the variable Ray reads
    assert env.get("RAY_DISABLE_USAGE_STATS") == "1"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "run as a non-root user"


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for p in (".git", "runs"):
        assert p in ignore


# ----------------------------------------------------------------------------- KubeRay manifest

# Field names per object, from KubeRay v1.7.0 ray-operator/apis/ray/v1/raycluster_types.go
# (json tags) and the generated CRD ray.io_rayclusters.yaml; "required" = fields without
# omitempty that the CRD lists as required.
RAYCLUSTER_SPEC_FIELDS = {
    "upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions",
    "headServiceAnnotations", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "historyServerOptions", "networkPolicy", "tlsOptions", "headGroupSpec", "rayVersion",
    "workerGroupSpecs",
}  # fmt: skip
RAYCLUSTER_SPEC_REQUIRED = {"headGroupSpec"}
HEAD_FIELDS = {
    "template", "headService", "enableIngress", "ingressOptions", "resources", "labels",
    "rayStartParams", "serviceType",
}  # fmt: skip
HEAD_REQUIRED = {"template"}
WORKER_FIELDS = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "priority", "resources", "labels", "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}  # fmt: skip
WORKER_REQUIRED = {"groupName", "minReplicas", "maxReplicas", "template"}
AUTH_FIELDS = {"enableK8sTokenAuth", "secretName", "mode"}
AUTH_MODES = {"disabled", "token"}
SERVICE_TYPES = {"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"}
# Kubernetes core/v1 fields the manifest may use (a subset of PodSpec / Container)
POD_SPEC_FIELDS = {
    "containers", "initContainers", "volumes", "nodeSelector", "tolerations", "affinity",
    "securityContext", "serviceAccountName", "imagePullSecrets", "priorityClassName",
    "terminationGracePeriodSeconds", "runtimeClassName",
}  # fmt: skip
CONTAINER_FIELDS = {
    "name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "ports",
    "resources", "volumeMounts", "securityContext", "lifecycle", "workingDir",
    "livenessProbe", "readinessProbe",
}  # fmt: skip
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?\d+)?$")
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
INT32_MAX = 2**31 - 1


def _fields(obj: dict[str, Any], allowed: set[str], required: set[str], where: str) -> list[str]:
    errs = [f"{where}: unknown field {k!r}" for k in obj if k not in allowed]
    errs += [f"{where}: required field {k!r} is missing" for k in required if k not in obj]
    return errs


def _check_pod_template(tpl: Any, where: str, want_gpu: bool) -> list[str]:
    errs: list[str] = []
    if not isinstance(tpl, dict) or not isinstance(tpl.get("spec"), dict):
        return [f"{where}.template.spec: a pod template with a spec is required"]
    errs += [f"{where}.template: unknown field {k!r}" for k in tpl if k not in ("metadata", "spec")]
    spec = tpl["spec"]
    errs += [f"{where}.template.spec: unknown field {k!r}" for k in spec if k not in POD_SPEC_FIELDS]
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return errs + [f"{where}: template.spec.containers needs at least one container"]
    for i, c in enumerate(containers):
        w = f"{where}.template.spec.containers[{i}]"
        errs += _fields(c, CONTAINER_FIELDS, {"name"}, w)
        limits = (c.get("resources") or {}).get("limits") or {}
        requests = (c.get("resources") or {}).get("requests") or {}
        for kind, table in (("limits", limits), ("requests", requests)):
            for k, v in table.items():
                if not (isinstance(v, int) or (isinstance(v, str) and QUANTITY.match(v))):
                    errs.append(f"{w}.resources.{kind}.{k}: {v!r} is not a Kubernetes quantity")
    ray = containers[0]  # KubeRay: the Ray container is containers[0] (RayContainerIndex)
    if not ray.get("image"):
        errs.append(f"{where}: the Ray container (containers[0]) needs an image")
    limits = (ray.get("resources") or {}).get("limits") or {}
    requests = (ray.get("resources") or {}).get("requests") or {}
    gpu = limits.get("nvidia.com/gpu")
    if want_gpu:
        if gpu is None or int(gpu) < 1:
            errs.append(f"{where}: the GPU worker's Ray container needs limits nvidia.com/gpu >= 1")
        elif "nvidia.com/gpu" in requests and str(requests["nvidia.com/gpu"]) != str(gpu):
            errs.append(f"{where}: extended resources need requests == limits (nvidia.com/gpu)")
    elif gpu:
        errs.append(f"{where}: the head should not take a GPU")
    return errs


def check_raycluster_v1(doc: dict[str, Any]) -> list[str]:
    """Every problem found in a RayCluster document against the KubeRay v1.7.0 schema + rules."""
    errs: list[str] = []
    if doc.get("apiVersion") != "ray.io/v1":
        errs.append(f"apiVersion is {doc.get('apiVersion')!r}, not 'ray.io/v1'")
    if doc.get("kind") != "RayCluster":
        errs.append(f"kind is {doc.get('kind')!r}, not 'RayCluster'")
    name = (doc.get("metadata") or {}).get("name", "")
    if not (DNS1035.match(name) and len(name) <= 53):
        errs.append(f"metadata.name {name!r} must be a DNS-1035 label of at most 53 characters")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return errs + ["spec is missing"]
    errs += _fields(spec, RAYCLUSTER_SPEC_FIELDS, RAYCLUSTER_SPEC_REQUIRED, "spec")
    rv = spec.get("rayVersion")
    if not (isinstance(rv, str) and re.fullmatch(r"\d+\.\d+\.\d+", rv)):
        errs.append(f"spec.rayVersion {rv!r} must be a quoted version string like '2.60.0'")
    if "authOptions" in spec:
        errs += _fields(spec["authOptions"], AUTH_FIELDS, set(), "spec.authOptions")
        if spec["authOptions"].get("mode", "token") not in AUTH_MODES:
            errs.append(f"spec.authOptions.mode must be one of {sorted(AUTH_MODES)}")
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))

    def group_params(g: dict[str, Any], where: str) -> None:
        rsp = g.get("rayStartParams", {})
        if not isinstance(rsp, dict):
            errs.append(f"{where}.rayStartParams must be a mapping")
            return
        for k, v in rsp.items():
            if not isinstance(v, str):
                errs.append(f"{where}.rayStartParams.{k}: {v!r} must be a string (quote it)")
        if "labels" in rsp:
            errs.append(f"{where}.rayStartParams.labels is not supported; use the group's labels field")
        for k, v in (g.get("resources") or {}).items():
            if not isinstance(v, str):
                errs.append(f"{where}.resources.{k}: {v!r} must be a string")
        if g.get("resources") and any(rsp.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            errs.append(f"{where}: resources set in both rayStartParams and resources; use one")

    head = spec.get("headGroupSpec")
    if isinstance(head, dict):
        errs += _fields(head, HEAD_FIELDS, HEAD_REQUIRED, "spec.headGroupSpec")
        if "rayStartParams" not in head:  # optional since KubeRay 1.1; kept for older operators
            errs.append("spec.headGroupSpec.rayStartParams: give it (may be {})")
        group_params(head, "spec.headGroupSpec")
        if head.get("serviceType", "ClusterIP") not in SERVICE_TYPES:
            errs.append(f"spec.headGroupSpec.serviceType must be one of {sorted(SERVICE_TYPES)}")
        errs += _check_pod_template(head.get("template"), "spec.headGroupSpec", want_gpu=False)

    groups = spec.get("workerGroupSpecs", [])
    if not isinstance(groups, list):
        return errs + ["spec.workerGroupSpecs must be a list"]
    names = [g.get("groupName") for g in groups]
    if len(set(names)) != len(names):
        errs.append(f"spec.workerGroupSpecs: groupName values must be unique: {names}")
    for i, g in enumerate(groups):
        w = f"spec.workerGroupSpecs[{i}]"
        errs += _fields(g, WORKER_FIELDS, WORKER_REQUIRED if not autoscaling else {"groupName", "template"}, w)
        if not isinstance(g.get("groupName"), str) or not g.get("groupName"):
            errs.append(f"{w}.groupName must be a non-empty string")
        nums = {}
        for k in ("replicas", "minReplicas", "maxReplicas", "numOfHosts"):
            if k in g:
                v = g[k]
                if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= INT32_MAX:
                    errs.append(f"{w}.{k}: {v!r} must be an int32 >= 0")
                else:
                    nums[k] = v
        lo, hi = nums.get("minReplicas", 0), nums.get("maxReplicas", INT32_MAX)
        if lo > hi:
            errs.append(f"{w}: minReplicas {lo} > maxReplicas {hi}")
        if "replicas" in nums and not lo <= nums["replicas"] <= hi:
            errs.append(f"{w}: replicas {nums['replicas']} outside [minReplicas, maxReplicas] = [{lo}, {hi}]")
        if "rayStartParams" not in g:
            errs.append(f"{w}.rayStartParams: give it (may be {{}})")
        group_params(g, w)
        errs += _check_pod_template(g.get("template"), w, want_gpu=True)
    return errs


def test_all_yaml_files_parse() -> None:
    files = sorted(DOCKER.glob("*.yaml")) + [GPU_CONFIG]
    assert len(files) >= 3
    for f in files:
        assert _load_all(f), f"{f} is empty"


def test_manifest_names_its_kuberay_version() -> None:
    assert f"KubeRay {KUBERAY_VERSION}" in MANIFEST.read_text()


def test_kuberay_manifest_matches_raycluster_v1_schema() -> None:
    doc = _raycluster()
    assert check_raycluster_v1(doc) == []
    spec = doc["spec"]
    assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    gpu_groups = [g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups, "there must be a GPU worker group"


def test_other_manifest_documents_are_plain_kubernetes_objects() -> None:
    for d in _load_all(MANIFEST):
        assert {"apiVersion", "kind", "metadata"} <= set(d), d
        if d["kind"] == "PersistentVolumeClaim":
            head = _raycluster()["spec"]["headGroupSpec"]["template"]["spec"]
            claims = [v["persistentVolumeClaim"]["claimName"] for v in head.get("volumes", []) if "persistentVolumeClaim" in v]
            assert d["metadata"]["name"] in claims, "the PVC should be mounted by the head (the store lives there)"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(apiVersion="ray.io/v1alpha1"), "apiVersion"),
        (lambda d: d["spec"].update(rayVersion=2.6), "rayVersion"),
        (lambda d: d["spec"].update(headGroupSpecs=d["spec"].pop("headGroupSpec")), "headGroupSpecs"),
        (lambda d: d["spec"]["workerGroupSpecs"][0].pop("groupName"), "groupName"),
        (lambda d: d["spec"]["workerGroupSpecs"][0].update(minReplicas=9, maxReplicas=2), "minReplicas"),
        (lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas=99), "replicas 99"),
        (lambda d: d["spec"]["workerGroupSpecs"][0]["rayStartParams"].update({"num-gpus": 1}), "must be a string"),
        (lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu"), "nvidia.com/gpu"),
        (lambda d: d["spec"]["workerGroupSpecs"][0].update(replica=1), "unknown field 'replica'"),
        (lambda d: d["spec"]["headGroupSpec"]["template"]["spec"].update(containers=[]), "at least one container"),
        (lambda d: d["metadata"].update(name="Merge_Search"), "DNS-1035"),
    ],
)
def test_schema_check_catches_mistakes(mutate: Any, message: str) -> None:
    doc = copy.deepcopy(_raycluster())
    mutate(doc)
    errs = check_raycluster_v1(doc)
    assert any(message in e for e in errs), errs


# ----------------------------------------------------------------------------- cluster launcher


def test_launcher_config_has_the_required_keys() -> None:
    c = yaml.safe_load(LAUNCHER.read_text())
    for k in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers", "auth", "docker"):
        assert k in c, f"{LAUNCHER.name} lacks {k!r}"
    assert c["head_node_type"] in c["available_node_types"]
    assert "type" in c["provider"]
    for name, nt in c["available_node_types"].items():
        assert {"resources", "node_config"} <= set(nt), name
    workers = [nt for n, nt in c["available_node_types"].items() if n != c["head_node_type"]]
    assert any(nt["resources"].get("GPU", 0) >= 1 for nt in workers), "no worker node type with a GPU"
    assert c["available_node_types"][c["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert sum(nt.get("min_workers", 0) for nt in c["available_node_types"].values()) <= c["max_workers"]


def test_launcher_config_passes_rays_own_checks() -> None:
    """What `ray up` runs before contacting the cloud: defaults filled in, then the JSON schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    c = yaml.safe_load(LAUNCHER.read_text())
    prepared = prepare_config(copy.deepcopy(c))
    validate_config(prepared)
    assert prepared["docker"]["image"] == c["docker"]["image"]
    # the head's autoscaler needs boto3 to start AWS workers (we replaced the default commands)
    if c["provider"]["type"] == "aws":
        assert any("boto3" in cmd for cmd in prepared["head_setup_commands"])


# ----------------------------------------------------------------------------- consistency


def test_versions_and_images_agree_across_files() -> None:
    args = _dockerfile_args()
    rc = _raycluster()
    assert rc["spec"]["rayVersion"] == args["RAY_VERSION"], "rayVersion must equal the image's Ray"
    images = {c["image"] for c in rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][:1]}
    for g in rc["spec"]["workerGroupSpecs"]:
        images.add(g["template"]["spec"]["containers"][0]["image"])
    images.add(yaml.safe_load(LAUNCHER.read_text())["docker"]["image"])
    assert len(images) == 1, f"head, workers and launcher should run one image: {images}"


def test_custom_gpu_resource_is_offered_by_both_cluster_files() -> None:
    c = yaml.safe_load(LAUNCHER.read_text())
    offered_vm = {k for nt in c["available_node_types"].values() for k in nt["resources"] if k not in ("CPU", "GPU", "memory")}
    offered_k8s = {k for g in _raycluster()["spec"]["workerGroupSpecs"] for k in (g.get("resources") or {})}
    assert offered_vm == offered_k8s, (offered_vm, offered_k8s)


def test_gpu_config_fits_the_clusters() -> None:
    cfg = yaml.safe_load(GPU_CONFIG.read_text())
    w = cfg["workers"]
    assert w["backend"] == "ray" and w["gpus_per_worker"] == 1
    rc = _raycluster()
    gpus_k8s = sum(
        g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        for g in rc["spec"]["workerGroupSpecs"]
    )
    assert w["count"] == gpus_k8s, "workers.count should equal the GPUs of the KubeRay cluster"
    c = yaml.safe_load(LAUNCHER.read_text())
    gpus_node = max(nt["resources"].get("GPU", 0) for nt in c["available_node_types"].values())
    assert w["count"] % gpus_node == 0 or w["count"] <= gpus_node
    for k in w.get("resources") or {}:
        assert all(k in (g.get("resources") or {}) for g in rc["spec"]["workerGroupSpecs"]), k


# ----------------------------------------------------------------------------- the GPU example config


def test_gpu_config_validates_without_model_files() -> None:
    """`search validate --no-files configs/gpu-7b-ties.yaml` (hub models are not fetched here)."""
    from search.config import load_config
    from search.validation import check_config

    cfg = load_config(GPU_CONFIG)
    assert check_config(cfg, check_files=False) == []
    assert cfg.models.dtype == "bfloat16" and cfg.merge.method == "ties" and cfg.merge.granularity == "block:4"
    assert set(cfg.merge.search) == {"weight", "density"}
    assert cfg.strategy.name == "nsga2" and not cfg.allow_public_test_sets


GPU_TASK_ROWS = {
    "ms_math_dev": [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(4)],
    "ms_code_dev": [{"code": f"def f{i}(x):\n    return x + {i}\n"} for i in range(3)],
    "ms_german_dev": [{"premise": "Der Hund schläft.", "hypothesis": "Ein Tier ruht.", "label": i % 3} for i in range(3)],
}


def test_gpu_config_tasks_produce_the_objective_metrics(tmp_path: Path) -> None:
    """The config's task YAMLs, pointed at a few local rows instead of the hub, run through
    real lm-eval on a tiny random Llama and report the metric keys the objectives name."""
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import LlamaConfig, LlamaForCausalLM

    from search.config import load_config
    from search.zoo.tiny_lm import build_tokenizer

    cfg = load_config(GPU_CONFIG)
    folder = GPU_CONFIG.parent / "tasks" / "gpu7b"
    for name, rows in GPU_TASK_ROWS.items():
        task = yaml.safe_load((folder / f"{name}.yaml").read_text())
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
        task.update(dataset_path="json", dataset_kwargs={"data_files": {task["test_split"]: str(data)}})
        task.pop("dataset_name", None)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(task, allow_unicode=True))
    tok = build_tokenizer()
    tok.model_max_length = 512
    model = LlamaForCausalLM(
        LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=2, vocab_size=300, max_position_embeddings=512,
                    pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    ).eval()  # fmt: skip
    tasks = TaskManager(include_path=str(tmp_path), include_defaults=False).load(list(GPU_TASK_ROWS))
    for t in tasks["tasks"].values():
        t.set_config(key="num_fewshot", value=0)
        if t.get_config("output_type") == "generate_until":
            t.set_config(key="generation_kwargs", value={"max_gen_toks": 4}, update=True)
    out = evaluate(lm=HFLM(pretrained=model, tokenizer=tok, batch_size=4, max_length=512), task_dict=tasks, bootstrap_iters=0)
    for o in cfg.objectives:
        (task_name,) = o.settings["tasks"]
        assert o.settings["metric"] in out["results"][task_name], (o.name, out["results"][task_name])
