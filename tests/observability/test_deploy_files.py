"""The Prometheus rules, their unit tests and the Grafana dashboard: valid, and built only
on metric names the app exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatplane.observability.metrics import exported_metric_names

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "chatplane.json"
METRIC_NAME = re.compile(r"\b(chatplane_[a-z0-9_]+|up)\b")
PROMETHEUS_OWN = {"up"}  # series Prometheus itself writes for every target


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is missing: scripts/ensure-promtool.sh installs Debian's prometheus"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_promtool(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def dashboard_exprs() -> list[str]:
    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, child in node.items():
                if key == "expr" and isinstance(child, str):
                    yield child
                else:
                    yield from walk(child)
        elif isinstance(node, list):
            for child in node:
                yield from walk(child)

    return list(walk(json.loads(DASHBOARD.read_text())))


def alert_exprs() -> list[str]:
    text = (PROMETHEUS / "alerts.yml").read_text()
    # Each `expr:` holds one line, or a block of the lines indented under it.
    exprs, lines = [], text.splitlines()
    for n, line in enumerate(lines):
        if line.strip().startswith("expr:"):
            head = line.split("expr:", 1)[1].strip()
            if head not in ("|", ">"):
                exprs.append(head)
                continue
            indent = len(line) - len(line.lstrip())
            block = []
            for follow in lines[n + 1 :]:
                if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                    break
                block.append(follow.strip())
            exprs.append(" ".join(block))
    return exprs


def test_the_alert_rules_are_valid() -> None:
    out = run_promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert "SUCCESS: 10 rules found" in out


def test_the_alert_rules_pass_their_unit_tests() -> None:
    out = run_promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    assert "SUCCESS" in out


def test_the_example_scrape_config_is_valid() -> None:
    run_promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS)


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool has no query checker: each query becomes a recording rule it checks."""
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{n}", "expr": e} for n, e in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "dashboard.yml").write_text(json.dumps(rules))  # JSON is YAML
    run_promtool("check", "rules", "dashboard.yml", cwd=tmp_path)


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_queries_use_only_exported_metrics(source: str) -> None:
    exprs = alert_exprs() if source == "alerts" else dashboard_exprs()
    assert exprs
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    unknown = used - exported_metric_names() - PROMETHEUS_OWN
    assert not unknown, f"{source} use metrics the app does not export: {sorted(unknown)}"
    assert any(name.startswith("chatplane_") for name in used)


def test_the_dashboard_covers_the_essentials() -> None:
    used = {name for expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)}
    for name in (
        "chatplane_http_requests_total",
        "chatplane_http_request_duration_seconds_bucket",
        "chatplane_turn_first_token_seconds_bucket",
        "chatplane_queue_depth",
        "chatplane_running_turns",
        "chatplane_db_pool_usage_ratio",
        "chatplane_tokens_total",
        "chatplane_cost_usd_total",
        "chatplane_limit_refusals_total",
    ):
        assert name in used


def test_every_alert_has_a_runbook_section() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    rules = (PROMETHEUS / "alerts.yml").read_text()
    anchors = re.findall(r'runbook: "docs/operations.md#([a-z]+)"', rules)
    alerts = re.findall(r"- alert: (\w+)", rules)
    assert sorted(anchors) == sorted(a.lower() for a in alerts)
    for alert in alerts:
        assert f"### {alert}" in operations
