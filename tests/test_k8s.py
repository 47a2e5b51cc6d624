"""The Kubernetes manifests in scripts/k8s/: valid against the API schemas (offline, strict),
and consistent with each other and with what tfbench understands."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bench.config.schema import ENV_PREFIX, NAME_RE, NON_FIELD_ENV, field_names
from tests.conftest import ROOT

K8S = ROOT / "scripts" / "k8s"
MANIFEST_FILES = sorted(K8S.glob("*.yaml"))
# 1.33: the oldest release with every feature the Job uses GA (backoffLimitPerIndex; the
# podFailurePolicy with DisruptionTarget is GA since 1.31), i.e. the minimum supported cluster.
# 1.37: the newest schema kubernetes-validate bundles, to catch removals and renames.
K8S_VERSIONS = ("1.33.0", "1.37.0")
# fieldRef paths the API server accepts in env (pkg/apis/core/validation: the plain paths in
# validEnvDownwardAPIFieldPathExpressions, plus subscripted labels and annotations).
ENV_FIELD_PATHS = {
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
}
SUBSCRIPTED_FIELD_PATH = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
# The label the Job controller puts on every pod of a Job (pkg/apis/batch: JobNameLabel).
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


ALL = [(path, doc) for path in MANIFEST_FILES for doc in _documents(path)]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in ALL if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in scripts/k8s/, found {len(found)}"
    return found[0]


def _jobs() -> list[dict[str, Any]]:
    return [doc for _, doc in ALL if doc["kind"] == "Job"]


def _sharded_jobs() -> list[dict[str, Any]]:
    return [job for job in _jobs() if job["spec"].get("completionMode") == "Indexed"]


def _sharded_job() -> dict[str, Any]:
    """The Indexed Job on a shared ReadWriteMany volume (job.yaml)."""
    return _one("Job", "tfbench-run-1")


def _pod_specs() -> list[dict[str, Any]]:
    specs = [doc["spec"]["template"]["spec"] for doc in _jobs()]
    return specs + [doc["spec"] for _, doc in ALL if doc["kind"] == "Pod"]


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in container.get("env", [])}


def _validate(doc: dict[str, Any], version: str) -> str:
    return kubernetes_validate.validate(doc, version, strict=True)


def test_there_are_manifests():
    names = {path.name for path in MANIFEST_FILES}
    assert {"job.yaml", "pvc.yaml", "merge-job.yaml", "configmap.example.yaml"} <= names, names


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schema(path, version):
    docs = _documents(path)
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        # Strict: an unknown or misspelt key is an error, not silently dropped. A kind without
        # a bundled schema raises SchemaNotFoundError and fails the test too.
        validated = _validate(doc, version)
        # The schema of exactly that release was used, not an older fallback.
        assert validated == version.rsplit(".", 1)[0], (path.name, validated)


# Deliberate mistakes, each of which the validation above must reject.
def _unknown_container_key(job):
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"


def _completions_as_words(job):
    job["spec"]["completions"] = "four"


def _unknown_job_spec_key(job):
    job["spec"]["backoffLimitPerIndexes"] = 3


def _misspelt_failure_rule(job):
    rule = job["spec"]["podFailurePolicy"]["rules"][1]
    rule["onExitCode"] = rule.pop("onExitCodes")


def _exit_codes_as_string(job):
    job["spec"]["podFailurePolicy"]["rules"][1]["onExitCodes"]["values"] = "2"


def _env_value_as_number(job):
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    next(var for var in env if var["name"] == "TFBENCH_SHARD_COUNT")["value"] = 4


@pytest.mark.parametrize(
    "breakage",
    [
        _unknown_container_key,
        _completions_as_words,
        _unknown_job_spec_key,
        _misspelt_failure_rule,
        _exit_codes_as_string,
        _env_value_as_number,
    ],
)
def test_a_broken_job_is_rejected(breakage):
    job = copy.deepcopy(_sharded_job())
    _validate(job, K8S_VERSIONS[0])  # the intact job passes
    breakage(job)
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(job, K8S_VERSIONS[0])


def test_strict_mode_is_what_catches_an_unknown_key():
    job = copy.deepcopy(_sharded_job())
    _unknown_container_key(job)
    kubernetes_validate.validate(job, K8S_VERSIONS[0], strict=False)  # lenient: passes
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolicyy"):
        _validate(job, K8S_VERSIONS[0])


@pytest.mark.parametrize("job", _sharded_jobs(), ids=lambda job: job["metadata"]["name"])
def test_shard_count_matches_completions_and_parallelism(job):
    spec = job["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    shard_count = _env(container)["TFBENCH_SHARD_COUNT"]["value"]
    assert spec["completions"] == spec["parallelism"] == int(shard_count)
    assert 1 <= spec["maxFailedIndexes"] <= spec["completions"]  # the API server requires <=
    assert spec["backoffLimitPerIndex"] >= 1
    assert "TFBENCH_SHARD" not in _env(container)  # the index comes from JOB_COMPLETION_INDEX


def test_run_id_is_the_job_name_from_the_job_controller_label():
    job = _sharded_job()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    run_id = _env(container)["TFBENCH_RUN_ID"]
    assert run_id["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{JOB_NAME_LABEL}']"
    # The job name becomes the run id, so it must be one tfbench accepts.
    assert NAME_RE.match(job["metadata"]["name"]), job["metadata"]["name"]


def test_env_field_refs_are_ones_the_api_server_accepts():
    for spec in _pod_specs():
        for container in _containers(spec):
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("fieldRef")
                if ref is None:
                    continue
                path = ref["fieldPath"]
                assert path in ENV_FIELD_PATHS or SUBSCRIPTED_FIELD_PATH.match(path), (var["name"], path)


def test_every_tfbench_variable_is_one_tfbench_knows():
    known = {ENV_PREFIX + name.upper() for name in field_names()} | set(NON_FIELD_ENV)
    used = {
        var["name"]
        for spec in _pod_specs()
        for container in _containers(spec)
        for var in container.get("env", [])
        if var["name"].startswith(ENV_PREFIX)
    }
    assert used, "no TFBENCH_* variable found"
    unknown = sorted(used - known)
    assert not unknown, f"TFBENCH_* variables tfbench does not know yet: {unknown}"


def test_pods_run_as_non_root_without_privileges():
    for spec in _pod_specs():
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True
        assert pod_sc["runAsUser"] == 1000
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for container in _containers(spec):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "privileged" not in sc and "runAsUser" not in sc  # nothing overrides the pod


def test_job_pods_are_never_restarted_in_place():
    for job in _jobs():
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never", job["metadata"]["name"]


def test_sharded_job_shape():
    job = _sharded_job()
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    # tfbench stops the running cell well within 30 s of SIGTERM: the grace period covers it.
    assert spec["terminationGracePeriodSeconds"] >= 30
    assert job["spec"]["podReplacementPolicy"] == "Failed"  # never two pods on one shard
    env = _env(container)
    assert env["TFBENCH_LOG_FORMAT"]["value"] == "json"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "args" not in container and "command" not in container  # the image's `tfbench run`
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert set(mounts) == {"/cfg", "/results", "/cache", "/dev/shm"}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "configMap" in volumes[mounts["/cfg"]]
    assert "persistentVolumeClaim" in volumes[mounts["/results"]]


def _rules_by_exit_code(rules: list[dict[str, Any]]) -> dict[int, str]:
    """The action that decides each exit code (the first matching rule wins)."""
    decided: dict[int, str] = {}
    for rule in rules:
        codes = rule.get("onExitCodes")
        if codes and codes["operator"] == "In":
            for code in codes["values"]:
                decided.setdefault(code, rule["action"])
    return decided


def test_pod_failure_policy():
    job = _sharded_job()
    rules = job["spec"]["podFailurePolicy"]["rules"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    for rule in rules:
        assert rule["action"] in {"FailJob", "FailIndex", "Ignore", "Count"}, rule
        assert ("onExitCodes" in rule) != ("onPodConditions" in rule), rule
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == container["name"]
            assert 0 not in rule["onExitCodes"]["values"]  # the API server forbids 0 with In
    # Preemption, eviction, node drain: retried, not counted. It comes first, so that a
    # disrupted pod is ignored whatever its exit code.
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    by_code = _rules_by_exit_code(rules)
    assert by_code[2] == "FailJob"  # bad config: the same on every shard
    assert by_code[1] == "FailIndex"  # cells failed, results written: do not rerun the shard
    assert by_code[143] == "Ignore"  # SIGTERM from Kubernetes: the shard resumes
    assert 137 not in by_code  # SIGKILL may be an OOM kill: it counts towards the limit
    assert "backoffLimitPerIndex" in job["spec"]  # FailIndex requires it


def test_manifests_refer_to_each_other_by_the_same_names():
    job = _sharded_job()
    merge = _one("Job", "tfbench-merge")
    claims = {doc["metadata"]["name"] for _, doc in ALL if doc["kind"] == "PersistentVolumeClaim"}
    for spec in _pod_specs():
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, volume
            if "configMap" in volume:
                _one("ConfigMap", volume["configMap"]["name"])
    results = _one("PersistentVolumeClaim", "tfbench-results")
    assert "ReadWriteMany" in results["spec"]["accessModes"]  # every shard writes there
    # The merge Job merges the run the sharded Job writes: /results/<job name>, without a GPU.
    (merge_container,) = merge["spec"]["template"]["spec"]["containers"]
    assert merge_container["args"] == ["merge", f"/results/{job['metadata']['name']}"]
    assert "nvidia.com/gpu" not in merge_container["resources"].get("limits", {})
    assert merge_container["image"] == job["spec"]["template"]["spec"]["containers"][0]["image"]


def test_example_config_is_a_valid_tfbench_config(tmp_path, capsys, monkeypatch):
    from bench.cli import main

    for name in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    config = _one("ConfigMap", "tfbench-config")["data"]["config.yaml"]
    (tmp_path / "config.yaml").write_text(config)
    # The directory form, as the container reads the mounted /cfg.
    assert main(["plan", "--config", str(tmp_path), "--json"]) == 0
    assert '"cells"' in capsys.readouterr().out


def test_readme_names_only_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    for name in set(re.findall(r"scripts/k8s/([\w.-]+\.yaml)", readme)):
        assert (K8S / name).is_file(), name


def test_the_s3_variant_needs_no_shared_volume():
    """job-s3.yaml: the same sharded Job, each pod on its own emptyDir, the run in a bucket."""
    names = {j["metadata"]["name"] for j in _sharded_jobs()}
    assert names == {"tfbench-run-1", "tfbench-run-s3", "tfbench-node-run-1"}
    shared, s3 = _sharded_job(), _one("Job", "tfbench-run-s3")
    for key in (
        "completions",
        "parallelism",
        "backoffLimitPerIndex",
        "podReplacementPolicy",
        "podFailurePolicy",
    ):
        assert s3["spec"][key] == shared["spec"][key], key
    spec = s3["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = _env(container)
    assert env["TFBENCH_SYNC_TO"]["value"].startswith("s3://")
    assert (
        env["TFBENCH_RUN_ID"] == _env(shared["spec"]["template"]["spec"]["containers"][0])["TFBENCH_RUN_ID"]
    )
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert volumes[mounts["/results"]] == {"name": "results", "emptyDir": {}}
    assert not any("persistentVolumeClaim" in v for v in volumes.values())
    # Credentials from an optional Secret or the service account's IAM role (IRSA), never a value here.
    assert container["envFrom"] == [{"secretRef": {"name": "tfbench-s3", "optional": True}}]
    account = _one("ServiceAccount", spec["serviceAccountName"])
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    assert not any(var["name"].startswith("AWS_") for var in container["env"])


def test_the_node_variant_asks_for_every_gpu_of_a_node():
    """job-node.yaml: the same sharded Job, one pod per node with all its GPUs, Guaranteed QoS
    (whole CPUs, requests = limits) so that the static CPU manager gives it exclusive cores to
    split between its concurrent cells."""
    shared, node = _sharded_job(), _one("Job", "tfbench-node-run-1")
    for key in ("backoffLimitPerIndex", "podReplacementPolicy", "podFailurePolicy"):
        assert node["spec"][key] == shared["spec"][key], key
    spec = node["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    gpus = limits["nvidia.com/gpu"]
    assert gpus > 1 and requests["nvidia.com/gpu"] == gpus
    assert requests["cpu"] == limits["cpu"] and str(limits["cpu"]).isdigit()  # whole CPUs
    assert requests["memory"] == limits["memory"]
    assert int(limits["cpu"]) >= gpus  # at least a core per concurrent cell
    env = _env(container)
    assert env["TFBENCH_CONCURRENT_CELLS"]["value"] == "auto"
    assert (
        env["TFBENCH_RUN_ID"] == _env(shared["spec"]["template"]["spec"]["containers"][0])["TFBENCH_RUN_ID"]
    )
    assert spec["volumes"] == shared["spec"]["template"]["spec"]["volumes"][:-1] + [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}
    ]
