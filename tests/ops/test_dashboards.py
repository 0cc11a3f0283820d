"""Dashboards and alerts as code (deploy/grafana/, deploy/prometheus/): every metric a panel or a rule
names has samples on /metrics once the app has been driven through what they watch (a refusal by the
adaptive limit, shadow mode, a rate-limit denial...), with the labels and label values they select and
group by, so a renamed metric or label cannot leave a blank panel or an alert that never fires.
(`make lint` checks the rules' syntax and runs their promtool unit tests, alerts_test.yml.)"""

import json
import re

import pytest
import yaml

from resilience import overload
from users.tasks import writebehind_flush
from users.writebehind import buffer

from ..factories import TokenFactory, UserFactory
from ..stack import ROOT
from .conftest import failing_breaker

pytestmark = pytest.mark.usefixtures("real_db")
DASHBOARD = ROOT / "deploy" / "grafana" / "bulwark.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\bbulwark_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(bulwark_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(by|on)\s*\(([^)]*)\)")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
SCRAPE_LABELS = {"instance", "job"}  # added by Prometheus when it scrapes, never in the exposition


def samples(text: str) -> dict[str, list[dict[str, str]]]:
    """Each sample name of a scrape -> the label sets of its samples."""
    found: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            found.setdefault(name, []).append(labels)
    return found


def argument(expr: str, start: int) -> str:
    """The parenthesised argument beginning at or after `start` (an aggregation's, after `by (...)`)."""
    opening = expr.index("(", start)
    depth = 0
    for end in range(opening, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[end], 0)
        if depth == 0:
            return expr[opening : end + 1]
    raise AssertionError(f"unbalanced parentheses in {expr}")


def problems(expr: str, scraped: dict[str, list[dict[str, str]]], legend: str = "") -> list[str]:
    """What `expr` asks of the scrape that it does not hold: a metric without samples, a label its samples
    lack (in a selector, or grouped on with `by`/`on`), an equality matcher's value no sample has, or a
    legend label the query does not keep."""
    found = []
    for name in set(METRIC.findall(expr)):
        if not scraped.get(name):
            found.append(f"{name} has no samples")

    def labels_of(name: str) -> set[str]:
        return {label for sample in scraped.get(name, []) for label in sample} | SCRAPE_LABELS

    for name, matchers in SELECTOR.findall(expr):
        for label, op, value in MATCHER.findall(matchers):
            if label not in labels_of(name):
                found.append(f"{name} has no label {label}")
            elif op == "=" and value not in {sample.get(label) for sample in scraped.get(name, [])}:
                found.append(f'{name} has no sample with {label}="{value}"')
    kept = set()
    for match in GROUPING.finditer(expr):
        labels = {label.strip() for label in match.group(2).split(",") if label.strip()}
        if match.group(1) == "by":
            kept |= labels
            # `by` keeps labels of the metrics it aggregates: each of them must have them
            for name in set(METRIC.findall(argument(expr, match.end() - 1))):
                found += [f"{name} has no label {label} (by)" for label in labels - labels_of(name)]
        else:  # `on` matches two sides: each label is on some metric of the expression
            names = set(METRIC.findall(expr))
            found += [
                f"no metric has label {label} (on)" for label in labels if not any(label in labels_of(n) for n in names)
            ]
    found += [f"legend label {label} is not kept" for label in set(LEGEND_LABEL.findall(legend)) - kept]
    return found


def dashboard_targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (target["expr"], target.get("legendFormat", "")) for panel in dashboard["panels"] for target in panel["targets"]
    ]


def rule_expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


@pytest.fixture
def overloaded(settings):
    """A limit of 10 in every group (floor = ceiling), no queue, a window closing on every request."""
    settings.RESILIENCE_ADAPTIVE_SHADOW = False
    settings.RESILIENCE_ADAPTIVE_INITIAL_LIMIT = 10
    settings.RESILIENCE_ADAPTIVE_MIN_LIMIT = 10
    settings.RESILIENCE_ADAPTIVE_MAX_LIMIT = 10
    settings.RESILIENCE_ADAPTIVE_QUEUE_SIZE = 0
    settings.RESILIENCE_ADAPTIVE_WINDOW_SAMPLES = 1
    settings.RESILIENCE_ADAPTIVE_WINDOW_SECONDS = 0.0
    overload.reset()
    yield settings
    overload.reset()


def fill(group: str) -> None:
    """Take every slot of `group`'s limit in this process, as requests in flight would."""
    limiter = overload.limiter(group)
    while limiter.acquire(overload.Priority.CRITICAL) == overload.ADMITTED:
        pass


def test_every_metric_label_and_value_a_panel_or_an_alert_names_is_exported(client, overloaded):
    user = UserFactory(username="scraped")
    token = TokenFactory(username=user["username"])
    profile, me = f"/api/v1/users/{user['id']}/", "/api/v1/users/me/"
    assert buffer.views_add(user_id=user["id"]) == "buffered"
    writebehind_flush()  # the flush gauges exist once a flush has applied something
    failing_breaker("payments")  # the breaker-state gauges need a breaker
    for _ in range(2):
        assert client.get(profile).status_code == 200  # latency observed, adaptive windows closed, cache hit
    # The adaptive limit enforced: a sheddable read and a critical (token) call refused...
    fill("reads")
    assert client.get(profile).status_code == 503
    assert client.get(me, headers={"Authorization": f"Token {token}"}).status_code == 503
    # ...and in shadow mode, admitted and counted; a rate-limit policy in shadow, then enforced.
    overloaded.RESILIENCE_ADAPTIVE_SHADOW = True
    fill("reads")
    overloaded.RESILIENCE_RATELIMIT_POLICIES = {"api.read": {"rate": "1/d", "mode": "shadow"}}
    assert client.get(profile).status_code == 200  # would have been denied twice over
    overloaded.RESILIENCE_RATELIMIT_POLICIES = {"api.read": {"rate": "1/d"}}
    assert client.get(profile).status_code == 429
    scrape = client.get("/metrics")
    assert scrape.status_code == 200
    scraped = samples(scrape.content.decode())
    assert scraped.get("bulwark_http_request_duration_seconds_bucket")  # the per-route latency histogram
    targets = dashboard_targets()
    assert targets and rule_expressions()
    found = [f"dashboard {expr!r}: {p}" for expr, legend in targets for p in problems(expr, scraped, legend)]
    found += [f"alerts {expr!r}: {p}" for expr in rule_expressions() for p in problems(expr, scraped)]
    assert not found, "\n".join(found)


def test_the_dashboard_has_the_panels_on_call_needs_and_each_alert_says_what_it_is():
    titles = {panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]}
    for needed in (
        *("Request rate", "Latency", "429s", "breaker", "Replica lag", "backlog", "flush", "hit ratio"),
        *("Adaptive concurrency limit", "min RTT", "Overload 503s", "Would have refused (shadow mode)"),
    ):
        assert any(needed.lower() in title.lower() for title in titles), needed
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
