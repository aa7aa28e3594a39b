"""The Debian package, as an operator meets it: build it from the binary under test
(packaging/build-deb), install it with dpkg, check what it put where, configure it, start the
service (under systemd when PID 1 is systemd, else the unit's ExecStart as its User=), send
through /usr/sbin/sendmail as an unprivileged user, then purge it and check nothing is left.

Needs root (it installs a package); skipped otherwise. Another MTA's /usr/sbin/sendmail and
/usr/bin/mailq (Postfix here) are diverted for the test, as docs/production.md tells an operator
to, and put back afterwards."""

from __future__ import annotations

import grp
import json
import os
import pwd
import select
import shlex
import shutil
import signal
import stat
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, to_toml

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a Debian package: needs root"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="not a Debian system (no dpkg-deb)"),
]

CONFIG = Path("/etc/outbox/outbox.toml")
UNIT = Path("/lib/systemd/system/outbox.service")
MTA_PATHS = [Path("/usr/sbin/sendmail"), Path("/usr/bin/mailq")]
SENDER = "nobody"  # an unprivileged user that exists on every Debian system
READY_SECS = 60


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, **kw)
    if check:
        assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def installed() -> bool:
    proc = run("dpkg-query", "-W", "-f=${Status}", "outbox", check=False)
    return proc.returncode == 0 and "installed" in proc.stdout and "not-installed" not in proc.stdout


def owner(path: Path) -> tuple[str, str, int]:
    st = os.stat(path)
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


def systemd_is_pid1() -> bool:
    return Path("/run/systemd/system").is_dir()


def recover_from_an_interrupted_run() -> None:
    """A run killed half-way leaves our diversions, or the package this test configured (its
    marker hostname): undo them, so the next run starts from the machine as it was."""
    if installed():
        ours = CONFIG.exists() and "mail.package.test" in CONFIG.read_text()
        if not ours:
            pytest.skip("an outbox package is installed on this machine already; not touching it")
        run("dpkg", "--purge", "outbox")
    diversions = run("dpkg-divert", "--list").stdout
    for path in MTA_PATHS:
        if f"{path}.before-outbox" in diversions and not path.exists():
            run("dpkg-divert", "--local", "--rename", "--remove", str(path))


def divert_other_mta() -> list[Path]:
    """Moves another package's sendmail/mailq aside (dpkg-divert --rename); returns them."""
    diverted = []
    for path in MTA_PATHS:
        if path.is_symlink() and os.readlink(path) == f"/etc/alternatives/{path.name}":
            continue
        if path.exists() or path.is_symlink():
            run("dpkg-divert", "--local", "--rename", "--divert", f"{path}.before-outbox",
                "--add", str(path))
            diverted.append(path)
    return diverted


def undivert(paths: list[Path]) -> None:
    for path in paths:
        run("dpkg-divert", "--local", "--rename", "--remove", str(path), check=False)


def unit_settings() -> dict[str, str]:
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), value.strip())
    return settings


def start_without_systemd(settings: dict[str, str]) -> subprocess.Popen:
    """What systemd would do for this unit, as far as the test needs: RuntimeDirectory= with
    its mode and owner, then ExecStart as User=/Group= with the ambient capabilities and UMask."""
    user, group = settings["User"], settings["Group"]
    runtime = Path("/run") / settings["RuntimeDirectory"]
    runtime.mkdir(exist_ok=True)
    os.chmod(runtime, int(settings["RuntimeDirectoryMode"], 8))
    shutil.chown(runtime, user, group)
    caps = ",".join("+" + c.lower().removeprefix("cap_") for c in settings["AmbientCapabilities"].split())
    command = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups",
               f"--inh-caps={caps}", f"--ambient-caps={caps}", "--",
               *shlex.split(settings["ExecStart"])]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd="/", umask=int(settings["UMask"], 8),
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    deadline = time.monotonic() + READY_SECS
    buf = b""
    while b'"event":"ready"' not in buf:
        left = deadline - time.monotonic()
        assert left > 0 and proc.poll() is None, f"no ready line: {buf!r} {proc.stderr.read()!r}"
        readable, _, _ = select.select([proc.stdout], [], [], left)
        if readable:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"exited before ready: {proc.wait()} {proc.stderr.read()!r}"
            buf += chunk
    return proc


def configure() -> None:
    """The operator's part: hostname, an account that `nobody` may send as, the dir transport
    (no AWS here), loopback listeners on free ports, and a certificate in /etc/outbox/certs."""
    config = tomllib.loads(CONFIG.read_text())
    config["hostname"] = "mail.package.test"
    config["smtp"].update({"submission_listen": ["127.0.0.1:0"], "submissions_listen": ["127.0.0.1:0"]})
    config["http"]["listen"] = ["127.0.0.1:0"]
    config["metrics"]["listen"] = "127.0.0.1:0"
    config["sender"]["transport"] = {"kind": "dir", "path": "/var/lib/outbox/mail"}
    config["account"] = [{
        "login": "cron", "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$u97+ruNeMbvQegvbYtuUAg$CF+Be4q8ABIjrJrVzraFKY6xtqAfBzkJk36n85Q1Gpo",
        "unix_users": [SENDER],
        "identity": [{"id": "cron", "email": "cron@package.test"}],
    }]
    with open(CONFIG, "r+") as f:  # in place: keeps the package's owner and mode
        f.truncate(0)
        f.write(to_toml(config) + "\n")
    certs = Path("/etc/outbox/certs")
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-days", "2", "-subj", "/CN=mail.package.test",
        "-keyout", str(certs / "key.pem"), "-out", str(certs / "cert.pem"))
    shutil.chown(certs / "key.pem", "root", "outbox")
    os.chmod(certs / "key.pem", 0o640)


def check_installed_files() -> None:
    assert owner(Path("/usr/bin/outbox")) == ("root", "root", 0o755)
    assert owner(Path("/etc/outbox")) == ("root", "outbox", 0o750)
    assert owner(CONFIG) == ("root", "outbox", 0o640)
    assert owner(Path("/var/lib/outbox")) == ("outbox", "outbox", 0o750)
    user = pwd.getpwnam("outbox")
    assert user.pw_uid < 1000 and user.pw_shell == "/usr/sbin/nologin", user
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "outbox").stdout
    assert str(CONFIG) in conffiles, conffiles
    # The packaged config: absolute paths only, nothing resolved under /etc by accident.
    config = tomllib.loads(CONFIG.read_text())
    assert config["state_dir"] == "/var/lib/outbox"
    assert config["submit_socket"] == "/run/outbox/submit.sock"
    for key in ("admin_socket", "submit_socket", "state_dir"):
        assert config[key].startswith("/"), (key, config[key])
    for key in ("cert", "key", "ca"):
        assert config["tls"][key].startswith("/etc/outbox/certs/"), config["tls"]
    # sendmail and mailq are alternatives links to the binary, which dispatches on its name.
    for path in MTA_PATHS:
        assert os.readlink(path) == f"/etc/alternatives/{path.name}", path
        assert Path(path).resolve() == Path("/usr/bin/outbox"), path
    # The unit: installed, enabled (the wants link exists even without a running systemd),
    # its documentation present, and not started before it is configured.
    settings = unit_settings()
    assert settings["ExecStart"].startswith("/usr/bin/outbox serve --config /etc/outbox/outbox.toml")
    assert settings["RuntimeDirectory"] == "outbox" and settings["StateDirectory"] == "outbox"
    assert Path("/etc/systemd/system/multi-user.target.wants/outbox.service").is_symlink()
    for line in UNIT.read_text().splitlines():
        if line.startswith("Documentation=file://"):
            assert Path(line.removeprefix("Documentation=file://")).is_file(), line
    assert settings["ConditionPathExists"] == "/etc/outbox/certs/key.pem"
    assert not Path("/etc/outbox/certs/key.pem").exists()
    if systemd_is_pid1():
        assert run("systemctl", "is-active", "outbox", check=False).stdout.strip() != "active"


def sendmail_as(user: str, message: bytes, *args: str) -> subprocess.CompletedProcess:
    # A clean environment, from /, as cron would run it: no OUTBOX_* variables, no ./config.
    return subprocess.run(["runuser", "-u", user, "--", "/usr/sbin/sendmail", *args],
                          input=message, capture_output=True, timeout=60, cwd="/",
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def check_purged() -> None:
    for path in ["/usr/bin/outbox", "/etc/outbox", "/var/lib/outbox", "/run/outbox", str(UNIT),
                 "/etc/systemd/system/multi-user.target.wants/outbox.service",
                 "/etc/alternatives/sendmail", "/etc/alternatives/mailq", *map(str, MTA_PATHS)]:
        assert not os.path.lexists(path), f"{path} left after purge"
    assert run("update-alternatives", "--query", "sendmail", check=False).returncode != 0
    assert run("dpkg-query", "-W", "outbox", check=False).returncode != 0 or not installed()
    # Deliberately kept (Debian's advice for system users): the user and its group.
    pwd.getpwnam("outbox")


def test_package_install_send_as_another_user_and_purge(outbox_bin, tmp_path):
    recover_from_an_interrupted_run()
    deb = run(str(REPO / "packaging" / "build-deb"), "--binary", str(outbox_bin),
              "--out", str(tmp_path)).stdout.strip()
    diverted = divert_other_mta()
    daemon = None
    try:
        run("dpkg", "-i", deb)
        check_installed_files()

        # Before the daemon runs, the unprivileged caller's error names what it tried: it
        # cannot read the config, so it used the system socket.
        refused = sendmail_as(SENDER, b"Subject: too early\n\nx\n", "someone@example.net")
        assert refused.returncode == 69, refused
        err = refused.stderr.decode()
        assert "cannot reach the Outbox daemon at /run/outbox/submit.sock" in err, err
        assert "/etc/outbox/outbox.toml (Permission denied" in err, err

        configure()
        # check-config finds /etc/outbox/outbox.toml by itself (run from elsewhere).
        assert run("outbox", "check-config", cwd=str(tmp_path)).stdout.strip() == f"{CONFIG}: ok"

        if systemd_is_pid1():
            run("systemctl", "start", "outbox")
        else:
            daemon = start_without_systemd(unit_settings())
        assert owner(Path("/run/outbox")) == ("outbox", "outbox", 0o755)
        assert stat.S_IMODE(os.stat("/run/outbox/submit.sock").st_mode) == 0o666
        assert stat.S_IMODE(os.stat("/run/outbox/admin.sock").st_mode) == 0o660

        sent = sendmail_as(SENDER, b"From: cron@package.test\nTo: admin@example.net\n"
                           b"Subject: from the package\n\ncron output\n", "-t", "-i")
        assert sent.returncode == 0, sent
        mail = Path("/var/lib/outbox/mail")
        deadline = time.monotonic() + 30
        while not [p for p in mail.glob("*.eml") if b"Subject: from the package" in p.read_bytes()]:
            assert time.monotonic() < deadline, f"not delivered: {sorted(mail.glob('*'))}"
            time.sleep(0.05)
        [envelope] = [json.loads(p.read_text()) for p in mail.glob("*.json")]
        assert envelope["recipients"] == ["admin@example.net"], envelope
        assert owner(next(mail.glob("*.eml")))[0] == "outbox"

        # mailq (the alternatives link) and an online backup work as root, config found alone.
        # The file lands before the sender records the message sent: mailq shows it queued
        # for that moment, then empty.
        deadline = time.monotonic() + 30
        while "0 message(s)" not in (listing := run("mailq", cwd="/").stdout):
            assert time.monotonic() < deadline, listing
            time.sleep(0.1)
        backup = tmp_path / "spool-backup.redb"
        run("outbox", "spool", "backup", str(backup), cwd="/")
        assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if installed() or run("dpkg-query", "-W", "outbox", check=False).returncode == 0:
            purged = run("dpkg", "--purge", "outbox", check=False)
        else:
            purged = None
        try:
            assert purged is None or purged.returncode == 0, purged
            check_purged()
        finally:
            undivert(diverted)
    for path in diverted:
        assert os.path.lexists(path), f"{path} of the other MTA not put back"
