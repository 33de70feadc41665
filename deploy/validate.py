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

Exit status 0 when everything holds; otherwise each problem on stderr and 1.
"""

import re
import sys
from pathlib import Path

import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
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
for path in sorted((DEPLOY / "base").glob("*.yaml")) + [DEPLOY / "hpa" / "worker-hpa.yaml"]:
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
        if str(ports.get("http", ports.get("metrics"))) != annotations.get("prometheus.io/port"):
            problem(where, f"prometheus.io/port {annotations.get('prometheus.io/port')} is not the container's port {ports}")
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

if problems:
    for p in problems:
        print(f"deploy/validate.py: {p}", file=sys.stderr)
    sys.exit(1)
print(f"deploy/: {len(core)} core resources valid for Kubernetes {', '.join(VERSIONS)}; "
      f"HPA, adapter rules and ScaledObject consistent")
