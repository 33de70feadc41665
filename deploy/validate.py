#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests in deploy/ (run by scripts/test.sh).

1. Every core resource (deploy/base, deploy/hpa/worker-hpa.yaml) validates
   strictly against the Kubernetes OpenAPI schemas bundled with the
   kubernetes-validate package, for the oldest and newest versions checked.
2. What no core schema covers is checked by structure: the KEDA
   ScaledObject (a CRD), the prometheus-adapter rules (Helm values), and
   the references between files: the autoscalers scale the worker
   Deployment, the HPA's metric is the one the adapter serves, every
   ConfigMap/Secret a pod reads exists, selectors match their pods, probes
   hit /health and /ready on a declared port, and each grace period covers
   the drain SKIPJACK_SHUTDOWN_GRACE_SECONDS asks for.
3. The kustomizations (base, the hpa and keda overlays, monitoring): every
   file they list exists, the overlays build on ../base, and together they
   cover every manifest; when `kubectl` is installed, `kubectl kustomize`
   builds each of them and the rendered objects are the listed files'.
4. The Prometheus operator objects (CRDs, so by structure): the PodMonitor
   selects the API and worker pods and scrapes a port each of them names,
   and the PrometheusRule's groups are exactly prometheus/alerts.yml's.

`validate.py --write-rules` regenerates deploy/monitoring/prometheusrule.yaml
from prometheus/alerts.yml (run it after editing the rules).

Exit status 0 when everything holds; otherwise each problem on stderr and 1.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
ALERTS = DEPLOY.parent / "prometheus" / "alerts.yml"
PROMETHEUS_RULE = DEPLOY / "monitoring" / "prometheusrule.yaml"
RULE_HEADER = """\
# GENERATED from prometheus/alerts.yml by `python3 deploy/validate.py
# --write-rules`: edit that file, then regenerate; the tests fail when the
# two differ. The same rules for the Prometheus operator.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: skipjack
  namespace: skipjack
  labels:
    app.kubernetes.io/name: skipjack
spec:
"""


def rule_text():
    """The PrometheusRule: alerts.yml's groups, comments kept, under spec."""
    lines = ALERTS.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = "\n".join(("  " + line) if line.strip() else "" for line in lines[start:])
    return RULE_HEADER + body + "\n"


if sys.argv[1:] == ["--write-rules"]:
    PROMETHEUS_RULE.write_text(rule_text())
    print(f"wrote {PROMETHEUS_RULE.relative_to(DEPLOY.parent)}")
    sys.exit(0)
VERSIONS = ["1.29.0", "1.37.0"]
# Seconds a pod needs beyond its drain: releasing leases, writing the last
# outcomes, closing connections.
GRACE_MARGIN = 10

problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


core = []
for path in sorted(p for p in (DEPLOY / "base").glob("*.yaml") if p.name != "kustomization.yaml") \
        + [DEPLOY / "hpa" / "worker-hpa.yaml"]:
    for doc in load(path):
        core.append((path.relative_to(DEPLOY), doc))
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problem(f"{path.name} {name_of(doc)}", f"invalid for Kubernetes {version}: {e.message} at {'.'.join(map(str, e.path))}")
            except Exception as e:  # unknown kind, schema missing
                problem(f"{path.name} {name_of(doc)}", f"cannot validate for Kubernetes {version}: {e}")

by_kind = {}
for path, doc in core:
    by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc

deployments = by_kind.get("Deployment", {})
for required in ["skipjack-api", "skipjack-worker"]:
    if required not in deployments:
        problem("base", f"no Deployment {required}")


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


for name, dep in deployments.items():
    where = f"Deployment/{name}"
    spec = dep["spec"]
    pod = spec["template"]
    selector = spec["selector"]["matchLabels"]
    labels = pod["metadata"].get("labels", {})
    if any(labels.get(k) != v for k, v in selector.items()):
        problem(where, f"selector {selector} does not match the pod labels {labels}")
    annotations = pod["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true":
        problem(where, "pods are not annotated for scraping (prometheus.io/scrape)")
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    for c in pod["spec"]["containers"]:
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if str(ports.get("metrics", ports.get("http"))) != annotations.get("prometheus.io/port"):
            problem(where, f"prometheus.io/port {annotations.get('prometheus.io/port')} is not the container's metrics port {ports}")
        metrics_addr = env_of(c).get("SKIPJACK_METRICS_ADDR")
        if metrics_addr and metrics_addr.rsplit(":", 1)[-1] != str(ports.get("metrics")):
            problem(where, f"SKIPJACK_METRICS_ADDR {metrics_addr} is not the port named metrics {ports}")
        for probe, path in [("livenessProbe", "/health"), ("readinessProbe", "/ready")]:
            get = c.get(probe, {}).get("httpGet")
            if not get or get.get("path") != path:
                problem(where, f"{probe} must GET {path}")
            elif get.get("port") not in ports and get.get("port") not in ports.values():
                problem(where, f"{probe} port {get.get('port')} is not a container port")
        for ref in c.get("envFrom", []):
            for kind, key in [("ConfigMap", "configMapRef"), ("Secret", "secretRef")]:
                if key in ref and ref[key]["name"] not in by_kind.get(kind, {}):
                    problem(where, f"reads {kind} {ref[key]['name']}, which deploy/base does not define")
        if "resources" not in c or "requests" not in c["resources"]:
            problem(where, "no resource requests")
        env = env_of(c)
        drain = float(env.get("SKIPJACK_SHUTDOWN_GRACE_SECONDS") or 25)
        pre_stop = 0
        cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        if cmd[:1] == ["sleep"]:
            pre_stop = float(cmd[1])
        if grace < pre_stop + drain + GRACE_MARGIN:
            problem(where, f"terminationGracePeriodSeconds {grace} < preStop {pre_stop} + drain {drain} + {GRACE_MARGIN}")
        if c["command"][0] not in ("api", "worker"):
            problem(where, f"runs {c['command']}, not a skipjack binary")

secret = by_kind.get("Secret", {}).get("skipjack", {})
if "DATABASE_URL" not in secret.get("stringData", {}):
    problem("Secret/skipjack", "no DATABASE_URL")

for name, svc in by_kind.get("Service", {}).items():
    pods = [d for d in deployments.values()
            if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items())]
    if not pods:
        problem(f"Service/{name}", "selects no pods")

# The HPA.
hpa = by_kind.get("HorizontalPodAutoscaler", {}).get("skipjack-worker")
if not hpa:
    problem("hpa", "no HorizontalPodAutoscaler skipjack-worker")
else:
    spec = hpa["spec"]
    if spec["scaleTargetRef"]["name"] != "skipjack-worker":
        problem("hpa", "does not scale the worker Deployment")
    if not 1 <= spec["minReplicas"] <= spec["maxReplicas"]:
        problem("hpa", "needs 1 <= minReplicas <= maxReplicas")
    if spec.get("behavior", {}).get("scaleDown", {}).get("stabilizationWindowSeconds", 0) < 60:
        problem("hpa", "needs a scale-down stabilization window")
    externals = [m["external"] for m in spec["metrics"] if m["type"] == "External"]
    hpa_metric = externals[0]["metric"]["name"] if externals else None
    if not hpa_metric:
        problem("hpa", "has no External metric")

# prometheus-adapter rules (Helm values).
values = load(DEPLOY / "hpa" / "prometheus-adapter-values.yaml")[0]
external_rules = values.get("rules", {}).get("external", [])
served = set()
for i, rule in enumerate(external_rules):
    where = f"prometheus-adapter rules.external[{i}]"
    for key in ["seriesQuery", "metricsQuery", "name"]:
        if key not in rule:
            problem(where, f"missing {key}")
    if "<<.LabelMatchers>>" not in rule.get("metricsQuery", ""):
        problem(where, "metricsQuery must apply <<.LabelMatchers>> (the HPA's namespace)")
    if rule.get("resources", {}).get("overrides", {}).get("namespace", {}).get("resource") != "namespace":
        problem(where, "the namespace label must map to the namespace resource")
    try:
        re.compile(rule["name"]["matches"])
    except (KeyError, re.error) as e:
        problem(where, f"bad name.matches: {e}")
    served.add(rule.get("name", {}).get("as"))
if hpa and hpa_metric not in served:
    problem("hpa", f"scales on {hpa_metric}, which the adapter rules do not serve ({served})")

# The KEDA ScaledObject.
docs = load(DEPLOY / "keda" / "worker-scaledobject.yaml")
if len(docs) != 1 or docs[0].get("kind") != "ScaledObject" or docs[0].get("apiVersion") != "keda.sh/v1alpha1":
    problem("keda", "expected one keda.sh/v1alpha1 ScaledObject")
else:
    so = docs[0]["spec"]
    if so["scaleTargetRef"]["name"] not in deployments or so["scaleTargetRef"]["name"] != "skipjack-worker":
        problem("keda", "does not scale the worker Deployment")
    if not 0 <= so["minReplicaCount"] <= so["maxReplicaCount"]:
        problem("keda", "needs minReplicaCount <= maxReplicaCount")
    kinds = {t["type"]: t for t in so["triggers"]}
    prom = kinds.get("prometheus", {}).get("metadata", {})
    for key in ["serverAddress", "query", "threshold"]:
        if not prom.get(key):
            problem("keda prometheus trigger", f"missing {key}")
    if prom.get("threshold") and not re.fullmatch(r"\d+(\.\d+)?", prom["threshold"]):
        problem("keda prometheus trigger", "threshold must be a number in a string")
    cron = kinds.get("cron", {}).get("metadata", {})
    for key in ["timezone", "start", "end", "desiredReplicas"]:
        if not cron.get(key):
            problem("keda cron trigger", f"missing {key}")
    for key in ["start", "end"]:
        if cron.get(key) and len(cron[key].split()) != 5:
            problem("keda cron trigger", f"{key} must be a 5-field cron expression")
    if cron.get("desiredReplicas") and not so["minReplicaCount"] <= int(cron["desiredReplicas"]) <= so["maxReplicaCount"]:
        problem("keda cron trigger", "desiredReplicas outside min..max")

# The kustomizations.
KUSTOMIZATIONS = {
    "base": None,
    "hpa": "worker-hpa.yaml",
    "keda": "worker-scaledobject.yaml",
    "monitoring": None,
}
listed = set()
for directory, autoscaler in KUSTOMIZATIONS.items():
    where = f"{directory}/kustomization.yaml"
    path = DEPLOY / directory / "kustomization.yaml"
    if not path.exists():
        problem(where, "missing")
        continue
    k = load(path)[0]
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        problem(where, "expected a kustomize.config.k8s.io/v1beta1 Kustomization")
    resources = k.get("resources", [])
    for ref in resources:
        target = (DEPLOY / directory / ref).resolve()
        if not target.exists():
            problem(where, f"lists {ref}, which does not exist")
        elif target.is_dir():
            if not (target / "kustomization.yaml").exists():
                problem(where, f"lists the directory {ref}, which has no kustomization.yaml")
        else:
            listed.add(target)
    if autoscaler:
        if "../base" not in resources:
            problem(where, "an overlay must build on ../base")
        if autoscaler not in resources:
            problem(where, f"does not add {autoscaler}")
    elif any(ref.startswith("..") for ref in resources):
        problem(where, "must list only its own files")
manifests = {p.resolve() for p in DEPLOY.glob("*/*.yaml")
             if p.name != "kustomization.yaml" and p.name not in ("secret.example.yaml", "prometheus-adapter-values.yaml")}
for missing in sorted(manifests - listed):
    problem("kustomizations", f"no kustomization lists {missing.relative_to(DEPLOY)}")

kubectl = shutil.which("kubectl")
if kubectl:
    for directory in KUSTOMIZATIONS:
        out = subprocess.run([kubectl, "kustomize", str(DEPLOY / directory)], capture_output=True, text=True)
        if out.returncode != 0:
            problem(f"kubectl kustomize deploy/{directory}", out.stderr.strip())
            continue
        rendered = {name_of(d) for d in yaml.safe_load_all(out.stdout) if d}
        expected = set()
        todo = [DEPLOY / directory]
        while todo:
            d = todo.pop()
            for ref in load(d / "kustomization.yaml")[0].get("resources", []):
                target = (d / ref).resolve()
                if target.is_dir():
                    todo.append(target)
                else:
                    expected |= {name_of(doc) for doc in load(target)}
        if rendered != expected:
            problem(f"kubectl kustomize deploy/{directory}", f"renders {sorted(rendered)}, expected {sorted(expected)}")

# The Prometheus operator objects.
pod_monitors = load(DEPLOY / "monitoring" / "podmonitor.yaml")
if len(pod_monitors) != 1 or pod_monitors[0].get("kind") != "PodMonitor" \
        or pod_monitors[0].get("apiVersion") != "monitoring.coreos.com/v1":
    problem("podmonitor", "expected one monitoring.coreos.com/v1 PodMonitor")
else:
    pm = pod_monitors[0]["spec"]
    match = pm["selector"].get("matchLabels", {})
    exprs = pm["selector"].get("matchExpressions", [])
    for name in ["skipjack-api", "skipjack-worker"]:
        dep = deployments.get(name)
        if not dep:
            continue
        labels = dep["spec"]["template"]["metadata"]["labels"]
        selected = all(labels.get(k) == v for k, v in match.items()) and all(
            (labels.get(e["key"]) in e["values"]) == (e["operator"] == "In") for e in exprs)
        if not selected:
            problem("podmonitor", f"does not select the pods of {name}")
        port_names = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        endpoints = pm.get("podMetricsEndpoints", [])
        if not any(e.get("port") in port_names and e.get("path", "/metrics") == "/metrics" for e in endpoints):
            problem("podmonitor", f"scrapes no /metrics port of {name} (ports {sorted(port_names)})")
    if pod_monitors[0]["metadata"].get("namespace") != "skipjack":
        problem("podmonitor", "must live in the skipjack namespace (it selects pods of its own namespace)")

rules = load(PROMETHEUS_RULE)
if len(rules) != 1 or rules[0].get("kind") != "PrometheusRule" \
        or rules[0].get("apiVersion") != "monitoring.coreos.com/v1":
    problem("prometheusrule", "expected one monitoring.coreos.com/v1 PrometheusRule")
elif rules[0]["spec"].get("groups") != load(ALERTS)[0]["groups"]:
    problem("prometheusrule", "differs from prometheus/alerts.yml: run python3 deploy/validate.py --write-rules")
elif PROMETHEUS_RULE.read_text() != rule_text():
    problem("prometheusrule", "not as generated from prometheus/alerts.yml: run python3 deploy/validate.py --write-rules")

if problems:
    for p in problems:
        print(f"deploy/validate.py: {p}", file=sys.stderr)
    sys.exit(1)
print(f"deploy/: {len(core)} core resources valid for Kubernetes {', '.join(VERSIONS)}; "
      f"HPA, adapter rules, ScaledObject, kustomizations"
      f"{' (built with kubectl kustomize)' if kubectl else ' (kubectl missing: structure only)'}, "
      f"PodMonitor and PrometheusRule consistent")
