"""SIGHUP reloads accounts, identities and the TLS certificate without dropping sessions; a
broken config is refused and the running one kept."""

from __future__ import annotations

import copy
import signal
import smtplib
import ssl

import pytest

from conftest import PASSWORDS, make_message, queue_id_of, to_toml, wait_for_log


def rewrite(server, config: dict):
    server.config_path.write_text(to_toml(config) + "\n")


def hup_and_wait(server, pattern: str, count: int):
    server.proc.send_signal(signal.SIGHUP)
    wait_for_log(server, pattern, count=count)


def login(server, user: str, password: str, cafile: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
    client.starttls(context=ssl.create_default_context(cafile=cafile))
    client.login(user, password)
    return client


def test_reload_accounts_and_certificate_keeps_sessions(server):
    old_ca = (server.root / "tls" / "ca.pem").read_text()
    old_ca_file = server.root / "old-ca.pem"
    old_ca_file.write_text(old_ca)
    # A session under way before the reload.
    ongoing = login(server, "alice", PASSWORDS["alice"], server.ca)
    ongoing.mail("alice@example.com")

    config = copy.deepcopy(server.config)
    config["account"].append({
        "login": "carol", "password_hash": config["account"][1]["password_hash"],
        "identity": [{"id": "carol", "email": "carol@example.com"}],
    })
    rewrite(server, config)
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (server.root / "tls" / name).unlink()  # a new development certificate is made
    hup_and_wait(server, "configuration reloaded", 1)

    # The old session goes on as if nothing happened.
    ongoing.rcpt("rcpt@example.net")
    code, reply = ongoing.data(make_message("across the reload"))
    assert code == 250, reply
    ongoing.quit()
    server.delivery(queue_id_of(reply))

    new_ca = (server.root / "tls" / "ca.pem").read_text()
    assert new_ca != old_ca
    with pytest.raises(ssl.SSLCertVerificationError):
        login(server, "alice", PASSWORDS["alice"], str(old_ca_file))
    carol = login(server, "carol", PASSWORDS["bob"], server.ca)
    refused = carol.sendmail("carol@example.com", ["r@example.net"],
                             make_message("carol is new", sender="carol@example.com"))
    assert refused == {}
    carol.quit()
    server.wait_for_eml_containing(b"carol is new")


def test_broken_config_is_refused_and_running_one_kept(server):
    server.config_path.write_text("this is = not [valid toml\n")
    hup_and_wait(server, "reload failed; keeping the running configuration", 1)
    client = login(server, "alice", PASSWORDS["alice"], server.ca)
    client.quit()
    assert server.alive()
