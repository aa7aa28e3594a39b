//! Stalwart's `jmap-client` crate against the real `outbox` binary: Email/import of a raw
//! message, EmailSubmission/set with and without an envelope, the Email moving from Drafts
//! to Sent, and undo of a delayed send. The server runs with the `dir` transport in a
//! temporary folder; its development CA is not one jmap-client can be given, so the test
//! accepts the (loopback, generated) certificate without verification.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jmap_client::client::Client;
use jmap_client::email_submission::{Delivered, UndoStatus};

const DEADLINE: Duration = Duration::from_secs(30);

struct Server {
    child: Child,
    https: String,
    mail: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let hash = outbox::accounts::hash_password("alice-pw").unwrap();
    let config = format!(
        r#"hostname = "localhost"
state_dir = "state"
[smtp]
submission_listen = ["127.0.0.1:0"]
submissions_listen = ["127.0.0.1:0"]
[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"
ca = "tls/ca.pem"
generate_dev_cert = true
[metrics]
listen = "127.0.0.1:0"
[http]
listen = ["127.0.0.1:0"]
[sender.transport]
kind = "dir"
path = "mail"
[[account]]
login = "alice"
password_hash = "{hash}"
[[account.identity]]
id = "alice"
email = "alice@example.com"
name = "Alice"
"#
    );
    let path = dir.path().join("outbox.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_outbox"))
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let https = loop {
        let line = lines
            .next()
            .expect("server exited before it was ready")
            .unwrap();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["event"] == "ready" {
            break v["https"][0].as_str().unwrap().to_string();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Server {
        child,
        https,
        mail: dir.path().join("mail"),
        _dir: dir,
    }
}

async fn connect(server: &Server) -> Client {
    Client::new()
        .credentials(("alice", "alice-pw"))
        .accept_invalid_certs(true)
        .connect(&format!("https://{}", server.https))
        .await
        .expect("JMAP session")
}

async fn wait_final(client: &Client, id: &str) -> jmap_client::email_submission::EmailSubmission {
    let start = Instant::now();
    loop {
        let s = client
            .email_submission_get(id, None)
            .await
            .unwrap()
            .unwrap();
        if s.undo_status() == Some(&UndoStatus::Final) {
            return s;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "submission {id} never became final"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn delivered(mail: &Path, id: &str) -> String {
    std::fs::read_to_string(mail.join(format!("{id}.eml"))).unwrap()
}

const RAW: &str = "From: Alice <alice@example.com>\r\nTo: Bob <bob@example.net>\r\n\
Subject: via jmap-client\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello from Rust\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn import_submit_and_move_to_sent() {
    let server = start();
    let client = connect(&server).await;

    let email = client
        .email_import(RAW.as_bytes().to_vec(), ["drafts"], Some(["$draft"]), None)
        .await
        .unwrap();
    let email_id = email.id().unwrap().to_string();

    let sub = client
        .email_submission_create(&email_id, "alice")
        .await
        .unwrap();
    let sub_id = sub.id().unwrap().to_string();
    let done = wait_final(&client, &sub_id).await;
    let status = done.delivery_status_email("bob@example.net").unwrap();
    assert_eq!(status.delivered(), &Delivered::Unknown);
    assert!(
        status.smtp_reply().starts_with("250"),
        "{}",
        status.smtp_reply()
    );
    assert!(delivered(&server.mail, &sub_id).contains("Hello from Rust"));

    let start = Instant::now();
    loop {
        let e = client
            .email_get(&email_id, None::<Vec<_>>)
            .await
            .unwrap()
            .unwrap();
        if e.mailbox_ids() == ["sent"] {
            assert!(!e.keywords().contains(&"$draft"));
            break;
        }
        assert!(start.elapsed() < DEADLINE, "Email never moved to Sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An envelope naming other recipients than the headers.
    let second = client
        .email_import(
            RAW.as_bytes().to_vec(),
            ["drafts"],
            None::<Vec<String>>,
            None,
        )
        .await
        .unwrap();
    let sub = client
        .email_submission_create_envelope(
            second.id().unwrap(),
            "alice",
            "alice@example.com",
            ["carol@example.net"],
        )
        .await
        .unwrap();
    let sub_id = sub.id().unwrap().to_string();
    wait_final(&client, &sub_id).await;
    let envelope = std::fs::read_to_string(server.mail.join(format!("{sub_id}.json"))).unwrap();
    let envelope: serde_json::Value = serde_json::from_str(&envelope).unwrap();
    assert_eq!(
        envelope["recipients"],
        serde_json::json!(["carol@example.net"])
    );

    // Sent already: undo is refused.
    let undo = client
        .email_submission_change_status(&sub_id, UndoStatus::Canceled)
        .await;
    assert!(undo.is_err(), "cancelling a sent message must fail");
}
