"""docs/prometheus-alerts.yml and docs/grafana-dashboard.json name only metrics that exist: every
`outbox_*` series they query is in a running server's /metrics, and every label value they match
on is one the code emits. With promtool installed (Debian's `prometheus`), the rules file is
checked by it too."""

from __future__ import annotations

import json
import re
import shutil
import smtplib
import ssl
import subprocess
import time
import urllib.request

import pytest
import yaml

from conftest import PASSWORDS, REPO, make_message

RULES = REPO / "docs" / "prometheus-alerts.yml"
DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
SUFFIXES = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}


def queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20, exprs
    return exprs


def exposed_series(server) -> set[str]:
    host, port = server.metrics
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    series = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        series.update(name + suffix for suffix in SUFFIXES[kind])
    return series


def traffic(server) -> None:
    """What makes every labelled family appear (a family without samples is not listed): a
    delivery, a bounce from the built-in SES simulator, a refused sender, a malformed SNS post."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.starttls(context=server.tls_context())
        client.login("alice", PASSWORDS["alice"])
        for rcpt in ["success@simulator.amazonses.com", "bounce@simulator.amazonses.com"]:
            client.mail("alice@example.com")
            client.rcpt(rcpt)
            code, _ = client.data(make_message("monitored"))
            assert code == 250
        # The header From is not alice's: refused after DATA, counted by reason.
        client.mail("alice@example.com")
        client.rcpt("r@example.net")
        code, _ = client.data(make_message("refused", sender="someone-else@example.org"))
        assert code == 550
    host, port = server.https[0]
    request = urllib.request.Request(f"https://{host}:{port}/sns", data=b"not json",
                                     headers={"Content-Type": "text/plain"})
    try:
        urllib.request.urlopen(request, timeout=10, context=ssl.create_default_context(cafile=server.ca))
    except urllib.error.HTTPError as e:
        assert e.code == 400


def test_every_metric_in_the_rules_and_dashboard_exists(server):
    named = {m for e in queries() for m in re.findall(r"\boutbox_[a-z_]+", e)}
    assert named, "no outbox metric named"
    traffic(server)
    deadline = time.monotonic() + 30
    while named - (exposed := exposed_series(server)):
        # Feedback from the simulator arrives after the send: wait for it, not for a set time.
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert named - exposed == set(), f"not in /metrics: {sorted(named - exposed)}; exposed: {sorted(exposed)}"


def test_every_label_value_matched_on_is_emitted_by_the_code():
    source = "\n".join(p.read_text() for p in (REPO / "src").rglob("*.rs"))
    for expr in queries():
        for label, values in re.findall(r'\b(outcome|reason|transport)=~?"([^"]+)"', expr):
            for value in values.split("|"):
                assert f'"{value}"' in source, f'{label}="{value}" in {expr!r}: no such value in src/'


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_the_rules():
    proc = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
