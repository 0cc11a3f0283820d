"""Dashboards and alerts as code (deploy/grafana/, deploy/prometheus/): every metric a panel or a rule
names is one /metrics exports, so a renamed metric cannot leave a blank panel or an alert that never
fires. (`make lint` checks the rules' syntax with promtool.)"""

import json
import re

import pytest
import yaml

from users import services
from users.tasks import writebehind_flush
from users.writebehind import buffer

from ..stack import ROOT

pytestmark = pytest.mark.usefixtures("real_db")
DASHBOARD = ROOT / "deploy" / "grafana" / "bulwark.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\bbulwark_[a-z0-9_]+")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def exported(text: str) -> set[str]:
    """Every sample name a scrape can hold: each family's by its type (a labelled family is declared
    before it has samples), plus the samples present."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.update(name + suffix for suffix in SUFFIXES.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def rule_expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_every_metric_a_panel_or_an_alert_names_is_exported(client):
    user = services.user_create(username="scraped", email="scraped@example.com", password="pw-scraped-0123456789")
    assert buffer.views_add(user_id=user["id"]) == "buffered"
    writebehind_flush()  # the flush gauges exist once a flush has applied something
    client.get("/api/v1/users/1/")  # a request observed by the latency histogram
    scrape = client.get("/metrics")
    assert scrape.status_code == 200
    available = exported(scrape.content.decode())
    assert "bulwark_http_request_duration_seconds_bucket" in available  # the per-route latency histogram
    for source, expressions in (("dashboard", dashboard_expressions()), ("alerts", rule_expressions())):
        named = {name for expr in expressions for name in METRIC.findall(expr)}
        assert named, source
        assert named - available == set(), f"{source} names metrics /metrics does not export"


def test_the_dashboard_has_the_panels_on_call_needs_and_each_alert_says_what_it_is():
    titles = {panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]}
    for needed in ("Request rate", "Latency", "429s", "breaker", "Replica lag", "backlog", "flush", "hit ratio"):
        assert any(needed.lower() in title.lower() for title in titles), needed
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
