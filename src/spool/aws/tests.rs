//! The spool contract on the AWS backend, against `moto_server` (SQS, S3 and DynamoDB through
//! the real SDK crates, endpoint set the standard way with `AWS_ENDPOINT_URL`). One moto per
//! test process; every test gets its own queue, bucket and table, made by `init` — the same
//! code `outbox aws init` runs.
//!
//! moto keeps SQS time in real seconds, so the AWS run uses a 2 s visibility timeout and lets
//! real time pass where a check waits for the queue ([`Backend::elapse`]); the ledger's clock
//! is the checks' manual clock, as on the embedded backend.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::clock::ManualClock;
use crate::config::AwsSpoolConfig;
use crate::spool::contract::{options, Backend};
use crate::spool::{Spool, SpoolOptions};

struct Moto {
    _child: Child,
    endpoint: String,
}

/// `MOTO_SERVER`, else moto from the e2e suite's `.venv` (which `./scripts/test` makes) with
/// DynamoDB calls serialized (`tests/e2e/moto_server.py` says why), else `moto_server` on
/// `PATH`.
fn moto_command() -> Vec<PathBuf> {
    if let Some(exe) = std::env::var_os("MOTO_SERVER") {
        return vec![exe.into()];
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = repo.join(".venv/bin/python");
    if python.exists() {
        return vec![python, repo.join("tests/e2e/moto_server.py")];
    }
    vec!["moto_server".into()]
}

fn moto() -> &'static str {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    &MOTO
        .get_or_init(|| {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let command = moto_command();
            let exe = command[0].clone();
            // Spawned from a thread that lives as long as the process, with the parent-death
            // signal set, so moto goes when the tests end (statics are never dropped).
            let (tx, rx) = std::sync::mpsc::channel();
            let spawn_exe = command.clone();
            std::thread::spawn(move || {
                use std::os::unix::process::CommandExt;
                let mut command = Command::new(&spawn_exe[0]);
                command
                    .args(&spawn_exe[1..])
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                unsafe {
                    command.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let _ = tx.send(command.spawn());
                loop {
                    std::thread::park();
                }
            });
            let child = rx.recv().unwrap().unwrap_or_else(|e| {
                panic!(
                    "starting {} ({e}): the AWS spool tests need moto_server \
                     (pip install -r tests/e2e/requirements.txt, or ./scripts/test)",
                    exe.display()
                )
            });
            let endpoint = format!("http://127.0.0.1:{port}");
            // Ready when it answers on its port.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "moto_server did not start"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            // The standard variables the SDK's chain reads (this test process only talks to
            // this moto).
            std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
            std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
            std::env::set_var("AWS_REGION", "us-east-1");
            Moto {
                _child: child,
                endpoint,
            }
        })
        .endpoint
}

pub(crate) struct Aws {
    config: AwsSpoolConfig,
}

pub(crate) fn aws() -> Aws {
    let _ = moto();
    let name = format!("t{:016x}", rand::random::<u64>());
    let config = AwsSpoolConfig {
        region: Some("us-east-1".into()),
        queue: format!("{name}-queue"),
        dead_letter_queue: format!("{name}-dlq"),
        bucket: name.clone(),
        prefix: "spool/".into(),
        table: name,
        timeout_secs: 20,
    };
    let created = block_on(super::init(&config, 2)).expect("aws init against moto");
    assert!(created.len() >= 4, "{created:?}");
    Aws { config }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

impl Backend for Aws {
    fn open(&self, options: SpoolOptions, clock: Arc<ManualClock>) -> Spool {
        block_on(super::open(&self.config, options, clock)).expect("open the AWS spool")
    }

    fn options(&self) -> SpoolOptions {
        SpoolOptions {
            visibility_timeout_ms: 2_000,
            ..options()
        }
    }

    fn ordered(&self) -> bool {
        false
    }

    fn announces_all(&self) -> bool {
        false
    }

    /// Real time for SQS too: what is due by the clock is visible in SQS after the same time
    /// (SQS counts whole seconds, hence the extra second).
    fn elapse<'a>(
        &'a self,
        clock: &'a ManualClock,
        ms: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        clock.advance_ms(ms);
        Box::pin(tokio::time::sleep(Duration::from_millis(ms + 1_100)))
    }
}

mod contract {
    use super::aws;

    contract_suite!(aws();
        leases_hide_until_the_deadline_then_reappear,
        a_large_message_reads_back_whole,
        extension_keeps_a_lease,
        the_queue_is_ordered_by_due_time_and_leases_in_batches,
        a_long_poll_wakes_when_mail_arrives,
        retries_back_off_and_the_fifth_failure_dead_letters,
        release_does_not_spend_an_attempt,
        a_late_sent_beats_a_concurrent_dead_letter,
        hold_release_cancel_and_retry_now_by_id,
        what_was_acknowledged_survives_a_reopen,
        suppressions_are_scoped_by_account_and_class_and_expire,
        feedback_applied_twice_counts_once_and_derives_the_state,
        a_late_delivery_does_not_undo_a_bounce_and_bounces_suppress_by_class,
        feedback_for_an_unknown_message_matches_nothing_but_suppresses,
        feedback_that_overtakes_the_send_applies_when_it_is_recorded,
        retention_purges_exactly_what_is_due,
        dead_letters_are_purged_after_their_retention,
        the_change_feed_resumes_from_a_cursor,
        activity_is_counted_once_and_outlives_record_retention,
        guard_state_round_trips_and_survives_a_reopen,
    );
}

/// The JMAP store's own contract on the shared (DynamoDB + S3) backend.
mod jmap_store {
    use std::sync::Arc;

    use super::aws;
    use crate::jmap::store::aws::AwsStore;
    use crate::jmap::store::{Kind, Store, T_EMAIL};

    async fn store() -> Store {
        let backend = aws();
        let (_, s3, ddb) = crate::spool::aws::clients(&backend.config).await;
        Store::shared(AwsStore::new(
            ddb,
            s3,
            backend.config.table.clone(),
            backend.config.bucket.clone(),
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn states_and_changes() {
        crate::jmap::store::tests::states_and_changes(&store().await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blobs_round_trip_and_go() {
        let store = store().await;
        let bytes = b"Subject: hi\r\n\r\nbody\r\n".to_vec();
        store
            .write(|tx| {
                tx.put_blob("a", "B1", &bytes)?;
                assert_eq!(tx.blob("a", "B1")?.as_deref(), Some(&bytes[..]));
                Ok(())
            })
            .unwrap();
        assert_eq!(store.read().unwrap().blob("a", "B1").unwrap(), Some(bytes));
        assert_eq!(store.read().unwrap().blob("b", "B1").unwrap(), None);
        store.write(|tx| tx.remove_blob("a", "B1")).unwrap();
        assert_eq!(store.read().unwrap().blob("a", "B1").unwrap(), None);
    }

    /// Nodes writing at once: optimistic transactions run again on conflict, so counters
    /// hand out every id once and every write's state bump counts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_lose_nothing() {
        let store = Arc::new(store().await);
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..5 {
                    let id = store
                        .write(|tx| {
                            let id = tx.next_id("M")?;
                            tx.put("a", T_EMAIL, &id, &serde_json::json!({}))?;
                            tx.touch("a", "Email", &id, Kind::Created);
                            Ok(id)
                        })
                        .unwrap();
                    ids.push(id);
                }
                ids
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20, "every id once");
        let rx = store.read().unwrap();
        assert_eq!(rx.state("a", "Email").unwrap(), 20);
        assert_eq!(
            rx.list::<serde_json::Value>("a", T_EMAIL).unwrap().len(),
            20
        );
        assert_eq!(rx.changes("a", "Email", 0).unwrap().len(), 20);
    }
}
