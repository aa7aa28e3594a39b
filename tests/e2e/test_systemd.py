"""The systemd unit: valid for systemd, and its sandboxing keeps the exposure score low."""

from __future__ import annotations

import re
import subprocess

from conftest import REPO


def unit_for(outbox_bin, tmp_path):
    # The unit names /usr/bin/outbox; point it at the binary under test so the check
    # covers the real command line.
    text = (REPO / "systemd" / "outbox.service").read_text()
    unit = tmp_path / "outbox.service"
    unit.write_text(text.replace("/usr/bin/outbox", str(outbox_bin)))
    return unit


def test_unit_verifies(outbox_bin, tmp_path):
    unit = unit_for(outbox_bin, tmp_path)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [l for l in proc.stderr.splitlines() if "outbox.service" in l]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_unit_exposure_score(outbox_bin, tmp_path):
    unit = unit_for(outbox_bin, tmp_path)
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                          capture_output=True, text=True)
    m = re.search(r"Overall exposure level for outbox.service: ([0-9.]+)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= 2.0, m.group(0)
    assert "Type=notify" in unit.read_text()
