#!/usr/bin/env python3
"""Policy test for entra-sync's rendered Kubernetes manifests (run by deploy/check).

    policy.py RENDERED.yaml...                 check the policy; exit 1 naming every failure
    policy.py --split-crds OUT.yaml RENDERED   also write the objects Kubernetes' own schemas
                                               cover to OUT.yaml (for kubernetes-validate)

Every Deployment (and Job) container must have: liveness and readiness probes (Deployments),
CPU and memory requests and a memory limit, and the non-root, locked-down securityContext
(runAsNonRoot, a non-zero runAsUser, no privilege escalation, a read-only root filesystem, all
capabilities dropped, the RuntimeDefault seccomp profile). KEDA's objects are CRDs that
kubernetes-validate has no schema for: their required fields are checked here instead. When
the render has both, ENTRA_SYNC_PUBLIC_URL must be https://<the Ingress host>.
"""

import sys

import yaml

CRD_GROUPS = ("keda.sh/",)


def load(paths):
    objects = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            objects.extend(o for o in yaml.safe_load_all(f) if o)
    return objects


def name_of(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def effective(container, pod, key):
    """A securityContext field from the container, else from the pod."""
    value = (container.get("securityContext") or {}).get(key)
    if value is None:
        value = (pod.get("securityContext") or {}).get(key)
    return value


def check_workload(obj, errors):
    kind = obj["kind"]
    pod = (obj.get("spec", {}).get("template") or {}).get("spec") or {}
    containers = [("container", c) for c in pod.get("containers") or []]
    containers += [("initContainer", c) for c in pod.get("initContainers") or []]
    if not pod.get("containers"):
        errors.append(f"{name_of(obj)}: no containers")
    for role, c in containers:
        where = f"{name_of(obj)} {role} {c.get('name')}"

        def fail(what):
            errors.append(f"{where}: {what}")

        if kind == "Deployment" and role == "container":
            for probe in ("livenessProbe", "readinessProbe"):
                if not c.get(probe):
                    fail(f"missing {probe}")
        resources = c.get("resources") or {}
        requests = resources.get("requests") or {}
        limits = resources.get("limits") or {}
        for key in ("cpu", "memory"):
            if key not in requests:
                fail(f"missing resources.requests.{key}")
        if "memory" not in limits:
            fail("missing resources.limits.memory")
        if effective(c, pod, "runAsNonRoot") is not True:
            fail("securityContext.runAsNonRoot is not true")
        user = effective(c, pod, "runAsUser")
        if user is None or user == 0:
            fail("securityContext.runAsUser is not set to a non-root uid")
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            fail("securityContext.allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail("securityContext.readOnlyRootFilesystem is not true")
        if sc.get("privileged"):
            fail("securityContext.privileged is true")
        dropped = (sc.get("capabilities") or {}).get("drop") or []
        if "ALL" not in dropped:
            fail("securityContext.capabilities.drop does not include ALL")
        if (sc.get("capabilities") or {}).get("add"):
            fail("securityContext.capabilities.add is not empty")
        seccomp = effective(c, pod, "seccompProfile") or {}
        if seccomp.get("type") != "RuntimeDefault":
            fail("securityContext.seccompProfile.type is not RuntimeDefault")
        image = c.get("image") or ""
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            fail(f"image {image!r} has no pinned tag")
    if pod.get("automountServiceAccountToken") is not False:
        errors.append(f"{name_of(obj)}: automountServiceAccountToken is not false")


def check_keda(obj, objects, errors):
    kind, spec = obj["kind"], obj.get("spec") or {}
    if kind == "ScaledObject":
        target = (spec.get("scaleTargetRef") or {}).get("name")
        if not any(o["kind"] == "Deployment" and o["metadata"]["name"] == target for o in objects):
            errors.append(f"{name_of(obj)}: scaleTargetRef.name {target!r} is no Deployment here")
        triggers = spec.get("triggers") or []
        if not triggers:
            errors.append(f"{name_of(obj)}: no triggers")
        for t in triggers:
            meta = t.get("metadata") or {}
            if t.get("type") == "redis-streams":
                for key in ("stream", "consumerGroup", "pendingEntriesCount"):
                    if not isinstance(meta.get(key), str) or not meta.get(key):
                        errors.append(f"{name_of(obj)}: redis-streams trigger lacks metadata.{key} (a string)")
            auth = (t.get("authenticationRef") or {}).get("name")
            if auth and not any(
                o["kind"] == "TriggerAuthentication" and o["metadata"]["name"] == auth for o in objects
            ):
                errors.append(f"{name_of(obj)}: authenticationRef {auth!r} is no TriggerAuthentication here")
    elif kind == "TriggerAuthentication":
        for ref in spec.get("secretTargetRef") or []:
            for key in ("parameter", "name", "key"):
                if not ref.get(key):
                    errors.append(f"{name_of(obj)}: secretTargetRef entry lacks {key}")
    else:
        errors.append(f"{name_of(obj)}: unknown KEDA kind, add a check for it")


def check_public_url(objects, errors):
    ingresses = [o for o in objects if o["kind"] == "Ingress"]
    configs = [
        o for o in objects
        if o["kind"] == "ConfigMap" and "ENTRA_SYNC_PUBLIC_URL" in (o.get("data") or {})
    ]
    for cm in configs:
        url = cm["data"]["ENTRA_SYNC_PUBLIC_URL"].rstrip("/")
        for ing in ingresses:
            hosts = [r.get("host") for r in ing["spec"].get("rules") or []]
            tls_hosts = [h for t in ing["spec"].get("tls") or [] for h in t.get("hosts") or []]
            if url not in [f"https://{h}" for h in hosts]:
                errors.append(f"{name_of(cm)}: ENTRA_SYNC_PUBLIC_URL {url!r} is not https:// + an "
                              f"Ingress host of {name_of(ing)} {hosts}")
            for h in hosts:
                if h not in tls_hosts:
                    errors.append(f"{name_of(ing)}: host {h!r} has no TLS certificate")


def main(argv):
    split_out = None
    if argv[:1] == ["--split-crds"]:
        split_out, argv = argv[1], argv[2:]
    if not argv:
        print(__doc__)
        return 2
    objects = load(argv)
    errors, checked = [], 0
    for obj in objects:
        if obj.get("apiVersion", "").startswith(CRD_GROUPS):
            check_keda(obj, objects, errors)
            checked += 1
        elif obj.get("kind") in ("Deployment", "Job"):
            check_workload(obj, errors)
            checked += 1
    check_public_url(objects, errors)
    if split_out:
        with open(split_out, "w", encoding="utf-8") as f:
            yaml.safe_dump_all(
                [o for o in objects if not o.get("apiVersion", "").startswith(CRD_GROUPS)], f,
                sort_keys=False)
    for e in errors:
        print(f"POLICY FAIL {e}")
    print(f"policy: {len(objects)} objects, {checked} checked, {len(errors)} failures in {' '.join(argv)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
