#!/usr/bin/env python3
"""Checks of deploy/monitoring/ that promtool does not make (run by deploy/check).

    monitoring.py DASHBOARD_RULES.yaml

- every alert of rules.yaml has labels.severity (critical or warning), annotations.summary,
  .description and .runbook_url, and the runbook_url is RUNBOOK_BASE#<the alert's name in lower
  case>, a heading of deploy/README.md;
- every alert has at least one firing and one quiet case in tests/*.yaml (promtool runs them);
- dashboard.json: schemaVersion 39 or newer, a Prometheus data source variable `datasource` that
  every panel and query uses, unique panel ids, a gridPos and a query on every panel but rows;
- kustomization.yaml turns dashboard.json into a ConfigMap labelled grafana_dashboard: "1".

Writes every dashboard query, its Grafana variables replaced, as a recording rule into
DASHBOARD_RULES.yaml, so that `promtool check rules` parses them as it parses the alerts.
"""

import glob
import json
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MONITORING = os.path.join(ROOT, "monitoring")
README = os.path.join(ROOT, "README.md")
RUNBOOK_BASE = "https://github.com/example/entra-sync/blob/main/deploy/README.md"
SEVERITIES = ("critical", "warning")
# Grafana's variables, as a query sees them once Grafana has replaced them.
GRAFANA_VARIABLES = {
    "$__rate_interval": "2m",
    "$__interval": "1m",
    "$__range": "6h",
    "$namespace": ".*",
}


def github_anchors(markdown):
    """The anchors GitHub gives the headings of a Markdown text."""
    anchors, seen = set(), {}
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else re.match(r"#{1,6} +(.*?) *#* *$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def check_rules(errors):
    with open(os.path.join(MONITORING, "rules.yaml"), encoding="utf-8") as f:
        groups = yaml.safe_load(f)["groups"]
    with open(README, encoding="utf-8") as f:
        anchors = github_anchors(f.read())
    alerts = []
    for group in groups:
        for rule in group["rules"]:
            name = rule.get("alert")
            if not name:
                errors.append(f"rules.yaml group {group['name']}: a rule without `alert` (recording rules go elsewhere)")
                continue
            if name in alerts:
                errors.append(f"rules.yaml: alert {name} is defined twice")
            alerts.append(name)
            severity = (rule.get("labels") or {}).get("severity")
            if severity not in SEVERITIES:
                errors.append(f"rules.yaml {name}: labels.severity {severity!r} is not one of {SEVERITIES}")
            annotations = rule.get("annotations") or {}
            for key in ("summary", "description", "runbook_url"):
                if not str(annotations.get(key) or "").strip():
                    errors.append(f"rules.yaml {name}: annotations.{key} is missing")
            url = annotations.get("runbook_url") or ""
            wanted = f"{RUNBOOK_BASE}#{name.lower()}"
            if url != wanted:
                errors.append(f"rules.yaml {name}: runbook_url {url!r} is not {wanted!r}")
            if name.lower() not in anchors:
                errors.append(f"rules.yaml {name}: deploy/README.md has no heading `#### {name}` (its runbook)")
    return alerts


def check_tests(alerts, errors):
    firing, quiet = set(), set()
    files = sorted(glob.glob(os.path.join(MONITORING, "tests", "*.yaml")))
    if not files:
        errors.append("deploy/monitoring/tests/ has no promtool test file")
    for path in files:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        if doc.get("rule_files") != ["../rules.yaml"]:
            errors.append(f"{os.path.relpath(path, ROOT)}: rule_files is not [../rules.yaml]")
        for test in doc.get("tests") or []:
            for case in test.get("alert_rule_test") or []:
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    for name in alerts:
        if name not in firing:
            errors.append(f"alert {name} has no firing case in deploy/monitoring/tests/")
        if name not in quiet:
            errors.append(f"alert {name} has no quiet case (no exp_alerts) in deploy/monitoring/tests/")
    for name in (firing | quiet) - set(alerts):
        errors.append(f"deploy/monitoring/tests/ tests an alert rules.yaml does not have: {name}")


def panels_of(dashboard):
    for panel in dashboard.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []


def check_dashboard(errors):
    with open(os.path.join(MONITORING, "dashboard.json"), encoding="utf-8") as f:
        dashboard = json.load(f)
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 39:
        errors.append(f"dashboard.json: schemaVersion {dashboard.get('schemaVersion')!r} is older than 39")
    if not dashboard.get("uid") or not dashboard.get("title"):
        errors.append("dashboard.json: no uid or title")
    variables = {v.get("name"): v for v in (dashboard.get("templating") or {}).get("list") or []}
    source = variables.get("datasource") or {}
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        errors.append("dashboard.json: no variable `datasource` of type datasource, query prometheus")
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    for name, variable in variables.items():
        if variable.get("type") == "query" and variable.get("datasource") != wanted:
            errors.append(f"dashboard.json: variable {name} does not query ${{datasource}}")
    ids, exprs = set(), []
    for panel in panels_of(dashboard):
        where = f"dashboard.json panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("id") in ids:
            errors.append(f"{where}: id used twice")
        ids.add(panel.get("id"))
        grid = panel.get("gridPos") or {}
        if not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")):
            errors.append(f"{where}: no complete gridPos")
        if panel.get("type") == "row":
            continue
        if panel.get("datasource") != wanted:
            errors.append(f"{where}: datasource is not ${{datasource}}")
        targets = panel.get("targets") or []
        if not targets:
            errors.append(f"{where}: no query")
        for target in targets:
            if target.get("datasource") != wanted:
                errors.append(f"{where} query {target.get('refId')}: datasource is not ${{datasource}}")
            if not str(target.get("expr") or "").strip():
                errors.append(f"{where} query {target.get('refId')}: no expr")
                continue
            exprs.append((panel.get("id"), target.get("refId"), target["expr"]))
    for variable in variables.values():
        query = variable.get("query")
        if variable.get("type") == "query" and not isinstance(query, (dict, str)):
            errors.append(f"dashboard.json: variable {variable.get('name')} has no query")
    return exprs


def check_kustomization(errors):
    with open(os.path.join(MONITORING, "kustomization.yaml"), encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    labels = (doc.get("generatorOptions") or {}).get("labels") or {}
    if labels.get("grafana_dashboard") != "1":
        errors.append('deploy/monitoring/kustomization.yaml: generatorOptions.labels.grafana_dashboard is not "1"')
    files = [f for g in doc.get("configMapGenerator") or [] for f in g.get("files") or []]
    if not any(f.split("=")[-1] == "dashboard.json" for f in files):
        errors.append("deploy/monitoring/kustomization.yaml: no configMapGenerator file from dashboard.json")


def promql(expr):
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    if "$" in expr:
        sys.exit(f"monitoring.py: a Grafana variable this check does not know in {expr!r}")
    return expr


def main(argv):
    if len(argv) != 1:
        print(__doc__)
        return 2
    errors = []
    alerts = check_rules(errors)
    check_tests(alerts, errors)
    exprs = check_dashboard(errors)
    check_kustomization(errors)
    rules = [{"record": f"dashboard:panel_{panel}:{ref}", "expr": promql(expr)} for panel, ref, expr in exprs]
    with open(argv[0], "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard.json queries", "rules": rules}]}, f, sort_keys=False)
    for e in errors:
        print(f"MONITORING FAIL {e}")
    print(f"monitoring: {len(alerts)} alerts, {len(exprs)} dashboard queries, {len(errors)} failures")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
