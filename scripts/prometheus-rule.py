#!/usr/bin/env python3
"""Writes deploy/prometheus/alerts.yml as the PrometheusRule of
deploy/k8s/components/prometheus-operator (tests/deploy_check.py checks
that the two agree).

    python3 scripts/prometheus-rule.py
"""
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE = ROOT / "deploy" / "k8s" / "components" / "prometheus-operator" / "prometheusrule.yaml"
HEAD = """# deploy/prometheus/alerts.yml as a PrometheusRule; tests/deploy_check.py
# checks that the two stay identical. Regenerate after changing alerts.yml:
#   python3 scripts/prometheus-rule.py
"""

doc = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "mqfn", "labels": {"app.kubernetes.io/name": "mqfn"}},
    "spec": yaml.safe_load(ALERTS.read_text()),
}
RULE.write_text(HEAD + yaml.safe_dump(doc, sort_keys=False, width=1000))
print(f"wrote {RULE.relative_to(ROOT)}")
