#!/usr/bin/env python3
"""Writes deploy/monitoring/prometheusrule.yaml from deploy/monitoring/rules.yaml.

    generate.py            write prometheusrule.yaml
    generate.py --check    exit 1, showing the difference, when prometheusrule.yaml is not what
                           it would write (deploy/check runs this)

rules.yaml is the one source of the alert rules. The PrometheusRule (prometheus-operator's CRD) is
its `groups:` section, comments included, indented under `spec:`; the check also loads both and
compares them as data, so the two cannot say different things.
"""

import difflib
import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "rules.yaml")
TARGET = os.path.join(HERE, "prometheusrule.yaml")

HEADER = """\
# GENERATED from rules.yaml by generate.py: do not edit. Edit rules.yaml, then run
#   python3 deploy/monitoring/generate.py
# (deploy/check fails while this file differs from what that writes).
#
# entra-sync's alert rules as a prometheus-operator PrometheusRule. Apply it in entra-sync's
# namespace, with the label your Prometheus's ruleSelector wants (kube-prometheus-stack: its
# release name), e.g.
#   kubectl -n entra-sync apply -f deploy/monitoring/prometheusrule.yaml
#   kubectl -n entra-sync label prometheusrule entra-sync release=kube-prometheus-stack
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: entra-sync
  labels:
    app.kubernetes.io/name: entra-sync
    app.kubernetes.io/component: alert-rules
spec:
"""


def render(source_text):
    lines = source_text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("groups:")]
    if len(starts) != 1:
        sys.exit(f"{SOURCE}: expected one top-level 'groups:' line, found {len(starts)}")
    body = lines[starts[0]:]
    for line in body[1:]:
        if line and not line.startswith((" ", "#")):
            sys.exit(f"{SOURCE}: 'groups:' must be its last top-level key, found {line!r}")
    # Empty lines stay empty (no trailing spaces, also inside block scalars).
    indented = ["  " + line if line else "" for line in body]
    return HEADER + "\n".join(indented) + "\n"


def main(argv):
    check = argv == ["--check"]
    if argv and not check:
        print(__doc__)
        return 2
    with open(SOURCE, encoding="utf-8") as f:
        source_text = f.read()
    wanted = render(source_text)
    generated = yaml.safe_load(wanted)
    source = yaml.safe_load(source_text)
    if generated["spec"] != source:
        sys.exit("generate.py: the generated PrometheusRule's spec differs from rules.yaml as data (a bug here)")
    if not check:
        with open(TARGET, "w", encoding="utf-8") as f:
            f.write(wanted)
        print(f"wrote {os.path.relpath(TARGET)}")
        return 0
    try:
        with open(TARGET, encoding="utf-8") as f:
            actual = f.read()
    except FileNotFoundError:
        actual = ""
    if actual != wanted:
        sys.stdout.writelines(difflib.unified_diff(
            actual.splitlines(keepends=True), wanted.splitlines(keepends=True),
            "prometheusrule.yaml (committed)", "prometheusrule.yaml (generated from rules.yaml)"))
        print("generate.py: deploy/monitoring/prometheusrule.yaml is not generated from rules.yaml; "
              "run: python3 deploy/monitoring/generate.py")
        return 1
    print("generate.py: prometheusrule.yaml is rules.yaml's rules")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
