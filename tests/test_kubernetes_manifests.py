"""kubernetes/: every kustomization renders with `kubectl kustomize`, validates strictly against
a pinned Kubernetes version's schemas, and passes the project's own checks (selectors match
labels, probes that work with TF Serving, the restricted Pod Security profile, pinned images,
TF Serving's config files, `stable` only in prod, one KFP namespace), and pass checkov (a scanner
this project did not write) with an explicit skip list."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from cardio.components import tfjob_trainer
from cardio.pipeline import kubeflow_runner

KUBERNETES = Path(__file__).resolve().parents[1] / "kubernetes"
KUBERNETES_VERSION = "1.33.0"   # the oldest release the manifests target (CronJob timeZone: 1.27+)
OVERLAYS = ("dev", "prod", "onprem")
POD_OWNERS = ("Deployment", "CronJob")
GUIDE = KUBERNETES.parent / "docs" / "operator-guide.md"
# checkov's Kubernetes checks that do not apply here, each with the reason:
CHECKOV_SKIPS = {
    # The images are the operator's builds: the project cannot know their digests. Overlays pin
    # by digest (test_an_overlay_can_pin_images_by_digest; operator's guide, "Images").
    "CKV_K8S_43": "image digest",
    # Pinned images (an explicit tag or a digest) do not change; `Always` would make every pod
    # start, and every HPA scale-up, depend on the registry being reachable.
    "CKV_K8S_15": "imagePullPolicy Always",
}


def render(path: Path) -> list[dict]:
    result = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def validate(documents: list[dict], tmp_path: Path, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    result = subprocess.run(["kubernetes-validate", "--strict", "-k", KUBERNETES_VERSION, str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"{name} does not validate:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.count("passed") == len(documents), result.stdout


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(KUBERNETES / "overlays" / request.param)


def by_kind(documents, kind):
    return [d for d in documents if d["kind"] == kind]


def one(documents, kind, name=None):
    found = [d for d in by_kind(documents, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def serving_root(documents) -> str:
    """The Pushers' serving root the overlay's retraining compiles with (gs:// read by TF Serving
    itself, or pvc://CLAIM mounted by TF Serving on-premise)."""
    return retraining_env(documents)["SERVING_ROOT"]


def retraining_env(documents) -> dict:
    """The retraining CronJob's environment (its ConfigMap's name carries kustomize's hash)."""
    cronjob = one(documents, "CronJob", "cardio-retraining")
    return one(documents, "ConfigMap", pod_spec(cronjob)["spec"]["containers"][0]["envFrom"][0][
        "configMapRef"]["name"])["data"]


def pod_spec(document):
    if document["kind"] == "CronJob":
        return document["spec"]["jobTemplate"]["spec"]["template"]
    return document["spec"]["template"]


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_overlay_validates_strictly(overlay, tmp_path):
    name, documents = overlay
    assert {d["kind"] for d in documents} >= {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "NetworkPolicy", "ServiceAccount", "ConfigMap", "CronJob", "Namespace"}
    # No custom resources here: kubernetes-validate has no schemas for them.
    assert all(d["apiVersion"].split("/")[0] in {"v1", "apps", "batch", "autoscaling", "policy",
                                                  "networking.k8s.io"} for d in documents)
    validate(documents, tmp_path, name)
    namespace = {"dev": "cardio-dev", "prod": "cardio", "onprem": "cardio"}[name]
    # Namespaced kinds only (a PersistentVolume belongs to the cluster).
    assert {d["metadata"].get("namespace") for d in documents
            if d["kind"] not in ("Namespace", "PersistentVolume")} == {namespace}
    # The namespace is part of the overlay, with Pod Security admission enforcing `restricted`.
    labels = one(documents, "Namespace", namespace)["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_selectors_match_their_pods(overlay):
    _, documents = overlay
    deployment = one(documents, "Deployment", "tf-serving")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels)
    assert matches(one(documents, "Service")["spec"]["selector"], labels)
    assert matches(one(documents, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    assert matches(one(documents, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], labels)
    target = one(documents, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "tf-serving")
    # Service ports point at named container ports that exist.
    ports = {p["name"]: p["containerPort"] for p in
             deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    assert {p["targetPort"] for p in one(documents, "Service")["spec"]["ports"]} == set(ports)
    # Every referenced ConfigMap, ServiceAccount and claim is in the overlay.
    names = {(d["kind"], d["metadata"]["name"]) for d in documents}
    for owner in by_kind(documents, "Deployment") + by_kind(documents, "CronJob"):
        spec = pod_spec(owner)["spec"]
        assert ("ServiceAccount", spec["serviceAccountName"]) in names
        for volume in spec["volumes"]:
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names


def test_pods_meet_the_restricted_pod_security_profile(overlay):
    _, documents = overlay
    for owner in by_kind(documents, "Deployment") + by_kind(documents, "CronJob"):
        spec = pod_spec(owner)["spec"]
        where = owner["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        # TF Serving reads gs:// through the GKE metadata server (Workload Identity: the account's
        # annotation), never with a Kubernetes token (kubernetes/base/serviceaccount.yaml).
        account = one(documents, "ServiceAccount", spec["serviceAccountName"])
        assert account["automountServiceAccountToken"] is False, where
        if where == "tf-serving":
            if serving_root(documents).startswith("gs://"):
                assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
            assert not any(v.get("projected") for v in spec.get("volumes", [])), where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert not context.get("privileged"), where
            # Pinned images: a tag that is not `latest`, or a digest.
            image = container["image"]
            assert re.search(r":[\w.-]+$|@sha256:[0-9a-f]{64}$", image.rsplit("/", 1)[-1]), image
            assert not image.endswith(":latest"), image
            limits, requests = container["resources"]["limits"], container["resources"]["requests"]
            assert limits["memory"] and requests["memory"] and requests["cpu"], where
            assert limits["cpu"], where
            # The root file system is read-only: /tmp must be a volume (Python, TF write there).
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, where
            for volume in container["volumeMounts"]:
                # Only emptyDirs and read-only mounts.
                kind = next(v for v in spec["volumes"] if v["name"] == volume["name"])
                assert volume.get("readOnly") or "emptyDir" in kind, (where, volume)


def test_tf_serving_container_and_probes(overlay):
    name, documents = overlay
    deployment = one(documents, "Deployment", "tf-serving")
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    assert container["image"] == "tensorflow/serving:2.19.1"
    flags = dict(a.lstrip("-").split("=", 1) for a in container["args"])
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    config = one(documents, "ConfigMap", template["spec"]["volumes"][0]["configMap"]["name"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")["mountPath"]
    for flag, key in (("model_config_file", "models.config"),
                      ("batching_parameters_file", "batching_parameters.txt"),
                      ("monitoring_config_file", "monitoring.config")):
        assert flags[flag] == f"{mount}/{key}" and key in config["data"]
    assert flags["enable_batching"] == "true"

    models = text_format.Parse(config["data"]["models.config"],
                               model_server_config_pb2.ModelServerConfig())
    served = models.model_config_list.config
    assert served and all(m.model_platform == "tensorflow" for m in served)
    # TF Serving reads the models where the Pusher writes them: the retraining's serving root,
    # gs:// (read by TF Serving itself, no volume in between that nothing fills) or, on-premise,
    # the claim the Pushers write (pvc://CLAIM), mounted read-only where models.config looks.
    cronjob = one(documents, "CronJob", "cardio-retraining")
    env = one(documents, "ConfigMap",
              pod_spec(cronjob)["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"])
    root = env["data"]["SERVING_ROOT"]
    if root.startswith("gs://"):
        assert not by_kind(documents, "PersistentVolumeClaim")
        assert {m["name"] for m in container["volumeMounts"]} == {"config", "tmp"}
        base = root
    else:
        claim, mount_path = kubeflow_runner.claim_root("serving_root", root)
        (mount,) = [m for m in container["volumeMounts"] if m["name"] not in ("config", "tmp")]
        volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
        assert volume["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
        assert mount["readOnly"] is True and mount["mountPath"] == mount_path
        assert one(documents, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == \
            ["ReadOnlyMany"]
        base = mount_path
    for model in served:
        assert model.base_path == f"{base}/{model.name}"
        # Every label points at a version the policy loads.
        assert set(model.version_labels.values()) <= set(model.model_version_policy.specific.versions)
    labels = {label for m in served for label in m.version_labels}
    assert labels == ({"stable"} if name in ("prod", "onprem") else {"stable", "canary"})

    # TF Serving has no gRPC health service: readiness is the REST model status of the served
    # model's `stable` version, liveness a TCP check of the gRPC port.
    path = f"/v1/models/{served[0].name}/labels/stable"
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "grpc"}

    # Prometheus metrics on, on the REST port, scraped through the pod's annotations.
    monitoring = config["data"]["monitoring.config"]
    assert re.fullmatch(r'prometheus_config \{\s*enable: true\s*path: "/monitoring/prometheus/metrics"\s*\}\s*',
                        monitoring)
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8501"
    assert annotations["prometheus.io/path"] == "/monitoring/prometheus/metrics"
    batching = dict(re.findall(r"(\w+) \{ value: (\d+) \}", config["data"]["batching_parameters.txt"]))
    assert int(batching["max_batch_size"]) >= 1 and int(batching["batch_timeout_micros"]) > 0


def test_network_policy_admits_grpc_clients_and_monitoring_only(overlay):
    _, documents = overlay
    rules = one(documents, "NetworkPolicy")["spec"]["ingress"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in rules}
    assert set(by_port) == {8500, 8501}
    assert all(peer["podSelector"]["matchLabels"] == {"cardio.io/serving-client": "true"}
               for peer in by_port[8500])
    assert by_port[8501] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]


def test_prod_scales_and_spreads(overlay):
    name, documents = overlay
    hpa = one(documents, "HorizontalPodAutoscaler")["spec"]
    pdb = one(documents, "PodDisruptionBudget")["spec"]
    deployment = one(documents, "Deployment")["spec"]
    # The HPA owns the scale: a `replicas` in the Deployment would reset it on every apply.
    assert "replicas" not in deployment
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    assert pdb["maxUnavailable"] == 1 and hpa["minReplicas"] >= (3 if name == "prod" else 1)
    if name == "prod":
        assert deployment["template"]["spec"]["topologySpreadConstraints"]


def test_retraining_cronjob_submits_the_compiled_pipeline(overlay):
    name, documents = overlay
    cronjob = one(documents, "CronJob", "cardio-retraining")
    assert cronjob["spec"]["schedule"] == "0 3 * * 1"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    # Suspended until the operator enables it: a KFP recurring run is the other scheduler.
    assert cronjob["spec"]["suspend"] is True
    container = pod_spec(cronjob)["spec"]["containers"][0]
    script = container["args"][0]
    assert "cardio pipeline compile" in script and "cardio pipeline submit" in script
    assert "--package /scratch/cardio.yaml" in script and "--output /scratch/cardio.json" in script
    env = one(documents, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"]
    # The submitted pipeline runs the same image version as the CronJob itself.
    assert container["image"] == env["IMAGE"]
    assert env["GPU_IMAGE"].startswith(env["IMAGE"].split("@")[0])
    assert container["resources"]["limits"]["cpu"]
    variables = set(re.findall(r"\$(\w+)", script))
    assert {"PROFILE", "DATA_ROOT", "KFP_HOST", "COMPILE_ARGS"} <= variables
    assert variables <= set(env), variables - set(env)
    # Multi-user KFP: `cardio pipeline submit` sends the projected token (audience
    # pipelines.kubeflow.org, rotated by the kubelet) named by KF_PIPELINES_SA_TOKEN_PATH, the
    # variable kfp and the CLI read (tests/test_pipeline_schedule.py: re-read per request).
    from kfp import client as kfp_client
    token = next(v for v in pod_spec(cronjob)["spec"]["volumes"] if v["name"] == "kfp-token")
    (source,) = token["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    assert 600 <= source["serviceAccountToken"]["expirationSeconds"] <= 86400
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "kfp-token"]
    variables = {e["name"]: e.get("value") for e in container["env"]}
    assert variables[kfp_client.KF_PIPELINES_SA_TOKEN_ENV] == \
        f"{mount['mountPath']}/{source['serviceAccountToken']['path']}"


def test_kubeflow_rbac_and_the_tfjob_pods_validate(tmp_path):
    documents = render(KUBERNETES / "kubeflow")
    validate(documents, tmp_path, "kubeflow")
    role = one(documents, "Role", "cardio-tfjob-launcher")
    rule = next(r for r in role["rules"] if r["apiGroups"] == [tfjob_trainer.GROUP])
    assert tfjob_trainer.PLURAL in rule["resources"]
    assert {"create", "get"} <= set(rule["verbs"])
    binding = one(documents, "RoleBinding", "cardio-tfjob-launcher")
    assert binding["subjects"][0]["name"] == tfjob_trainer.TFJobSpec(image="x").service_account
    # The TFJob is a custom resource (no schema offline): its replicas' pod templates are
    # validated as Pods instead.
    job = tfjob_trainer.build_tfjob("cardio-x", "cardio-pipelines",
                                    tfjob_trainer.TFJobSpec(image="registry.example/cardio:1-gpu"),
                                    {"input_dict": "{}", "output_dict": "{}", "exec_properties": "{}"})
    pods = [{"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": f"cardio-x-{kind.lower()}", "namespace": "cardio-pipelines",
                          **replica["template"]["metadata"]},
             "spec": replica["template"]["spec"]}
            for kind, replica in job["spec"]["tfReplicaSpecs"].items()]
    validate(pods, tmp_path, "tfjob-pods")


def test_one_kfp_namespace_across_rbac_overlays_and_guide():
    """The CronJob submits to the namespace where the RBAC lets it, and the guide creates it."""
    rbac = render(KUBERNETES / "kubeflow")
    kfp_namespace = {d["metadata"]["namespace"] for d in rbac}
    assert len(kfp_namespace) == 1
    (kfp_namespace,) = kfp_namespace
    subjects = one(rbac, "RoleBinding", "cardio-retraining-submitter")["subjects"]
    guide = GUIDE.read_text()
    for name in OVERLAYS:
        documents = render(KUBERNETES / "overlays" / name)
        cronjob = one(documents, "CronJob", "cardio-retraining")
        spec = pod_spec(cronjob)["spec"]
        env = one(documents, "ConfigMap", spec["containers"][0]["envFrom"][0]["configMapRef"]["name"])
        assert env["data"]["KFP_NAMESPACE"] == kfp_namespace, name
        assert {"kind": "ServiceAccount", "name": spec["serviceAccountName"],
                "namespace": cronjob["metadata"]["namespace"]} in subjects, name
    # The guide creates the profile namespace and points every command at it.
    assert f"name: {kfp_namespace}" in guide
    assert set(re.findall(r"--namespace[ =](\S+)", guide)) == {kfp_namespace}


def _pinned_images(documents):
    return [c["image"] for owner in by_kind(documents, "Deployment") + by_kind(documents, "CronJob")
            for c in pod_spec(owner)["spec"]["containers"]]


def test_an_overlay_can_pin_images_by_digest(tmp_path):
    digest = "sha256:" + "ab" * 32
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        # kustomize takes bases by relative path only.
        "resources": [os.path.relpath(KUBERNETES / "overlays" / "prod", tmp_path)],
        "images": [{"name": "tensorflow/serving", "digest": digest},
                   {"name": "ghcr.io/cardio-pipeline/cardio", "newName": "registry.example/cardio",
                    "digest": digest}]}))
    documents = render(tmp_path)
    images = _pinned_images(documents)
    assert sorted(images) == sorted([f"tensorflow/serving@{digest}",
                                     f"registry.example/cardio@{digest}"])
    validate(documents, tmp_path, "prod-by-digest")


def test_checkov_passes_every_rendered_overlay(tmp_path):
    """checkov (not written here) on every rendered kustomization, skipping only CHECKOV_SKIPS."""
    result = subprocess.run([str(KUBERNETES.parent / "tools" / "checkov.sh")],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"checkov could not be installed (tools/checkov.sh): {result.stderr[-500:]}")
    checkov = result.stdout.strip()
    count = 0
    for path in ("overlays/dev", "overlays/prod", "overlays/onprem", "kubeflow",
                 "kubeflow-onprem"):
        documents = render(KUBERNETES / path)
        count += len(documents)
        (tmp_path / f"{path.replace('/', '-')}.yaml").write_text(yaml.safe_dump_all(documents))
    result = subprocess.run(
        [checkov, "--skip-download", "--framework", "kubernetes", "--directory", str(tmp_path),
         "--skip-check", ",".join(CHECKOV_SKIPS), "--output", "json", "--quiet", "--compact"],
        capture_output=True, text=True)
    report = json.loads(result.stdout)
    failed = [(c["check_id"], c["check_name"], c["resource"])
              for c in report["results"]["failed_checks"]]
    assert failed == [] and result.returncode == 0, failed
    summary = report["summary"]
    assert summary["parsing_errors"] == 0
    # Every rendered document was scanned (checkov counts a CronJob's pod template as well).
    assert summary["resource_count"] >= count and summary["passed"] > 10 * len(OVERLAYS)


@pytest.mark.parametrize("path", ["overlays/dev", "overlays/prod", "kubeflow"])
def test_kustomizations_render_without_warnings(path):
    result = subprocess.run(["kubectl", "kustomize", str(KUBERNETES / path)], capture_output=True,
                            text=True, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_onprem_pushers_and_tf_serving_share_one_export(tmp_path):
    """On-premise: the compiled pipeline's Pushers mount the claim the retraining's serving root
    names, in the pipelines namespace (kubernetes/kubeflow-onprem), on the same NFS export TF
    Serving's read-only claim shows (kubernetes/overlays/onprem); both validate strictly."""
    serving = render(KUBERNETES / "overlays" / "onprem")
    pipelines = render(KUBERNETES / "kubeflow-onprem")
    validate(pipelines, tmp_path, "kubeflow-onprem")
    env = retraining_env(serving)
    claim, _ = kubeflow_runner.claim_root("serving_root", env["SERVING_ROOT"])
    writer = one(pipelines, "PersistentVolumeClaim", claim)
    assert writer["metadata"]["namespace"] == env["KFP_NAMESPACE"]
    assert writer["spec"]["accessModes"] == ["ReadWriteMany"]
    reader = one(serving, "PersistentVolumeClaim", claim)
    exports = []
    for documents, bound in ((pipelines, writer), (serving, reader)):
        volume = one(documents, "PersistentVolume", bound["spec"]["volumeName"])
        assert volume["spec"]["claimRef"] == {"name": claim,
                                              "namespace": bound["metadata"]["namespace"]}
        exports.append((volume["spec"]["nfs"]["server"], volume["spec"]["nfs"]["path"]))
    assert exports[0] == exports[1]
    # The pipeline compiled from this overlay's roots mounts that claim in its Pushers only.
    summary = kubeflow_runner.compile_profile(
        "demo", str(tmp_path / "c.json"), data_root=env["DATA_ROOT"],
        pipeline_root=env["PIPELINE_ROOT"], serving_root=env["SERVING_ROOT"],
        segmenter_uri=env["SEGMENTER_URI"])
    _, platform = kubeflow_runner.read_package(summary["pipeline_spec"])
    mounted = {label: [m["pvcNameParameter"]["runtimeValue"]["constant"]
                       for m in config.get("pvcMount", [])]
               for label, config in platform["platforms"]["kubernetes"]["deploymentSpec"][
                   "executors"].items()}
    assert {label for label, claims in mounted.items() if claim in claims} == {
        f"Pusher.{cell}_executor" for cell in summary["grid"]}
