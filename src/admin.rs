//! The admin socket: a Unix socket in the state folder through which `outbox queue …` and
//! `outbox dlq …` talk to the running daemon (redb lets one process open the spool).
//!
//! One JSON request per line, one JSON answer per line. Who may connect is decided by the
//! socket's file mode (0660: the service user and its group), like Postfix's `postqueue`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::domain::{MessageClass, QueueId, State, SubmissionRecord, Suppression, ALL_CLASSES};
use crate::reputation::{Decision, HoldTarget, Reputation, ReputationReport};
use crate::spool::{Action, Compacted, Listing, Spool, SpoolError};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// Most records one listing returns (the queue's own indexes are read, oldest first).
const MAX_LISTED: usize = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    QueueList {
        #[serde(default)]
        state: Option<State>,
        #[serde(default)]
        account: Option<String>,
        #[serde(default)]
        recipient: Option<String>,
    },
    QueueShow {
        id: String,
    },
    /// One message (`id`) or every queued one (`all`) becomes due now.
    QueueRetry {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        all: bool,
    },
    QueueDelete {
        id: String,
    },
    /// Keep one (or every queued) message from being sent until released.
    QueueHold {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        all: bool,
    },
    QueueRelease {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        all: bool,
    },
    /// Send one queued or held message now, before its release time too.
    QueueSendNow {
        id: String,
    },
    DlqList,
    DlqRedrive {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        all: bool,
    },
    DlqPurge,
    /// Rewrite the spool file without its free space.
    QueueCompact,
    /// A consistent copy of the spool file, taken while the daemon runs: the answer line
    /// (with `backup_bytes`) is followed by exactly that many bytes of the file.
    SpoolBackup,
    SuppressionList,
    SuppressionAdd {
        address: String,
        #[serde(default = "all_classes")]
        class: String,
        #[serde(default = "all_classes")]
        account: String,
        #[serde(default)]
        reason: Option<String>,
        /// Days until the entry lapses; none: never.
        #[serde(default)]
        days: Option<u64>,
    },
    SuppressionRemove {
        address: String,
        #[serde(default = "all_classes")]
        class: String,
        #[serde(default = "all_classes")]
        account: String,
    },
    /// Bounce and complaint rates, the guard's holds and decisions.
    Reputation,
    /// End the guard's hold on a class, for the whole account or one identity.
    ReputationRelease {
        class: String,
        #[serde(default)]
        identity: Option<String>,
    },
}

fn all_classes() -> String {
    ALL_CLASSES.to_string()
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Records listed or shown.
    #[serde(default)]
    pub records: Vec<SubmissionRecord>,
    /// Messages changed (retried, deleted, redriven, purged).
    #[serde(default)]
    pub changed: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressions: Vec<Suppression>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted: Option<Compacted>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation: Option<ReputationReport>,
    /// What `reputation release` decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// The length of the spool copy that follows the answer line (`SpoolBackup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_bytes: Option<u64>,
}

impl Response {
    fn error(e: impl std::fmt::Display) -> Response {
        Response {
            error: Some(e.to_string()),
            ..Default::default()
        }
    }
}

/// Serves the socket until shutdown. A stale socket file from a previous run is replaced.
pub async fn serve(
    path: PathBuf,
    spool: Spool,
    reputation: Option<Arc<Reputation>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
    }
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed");
                        continue;
                    }
                },
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let spool = spool.clone();
            let reputation = reputation.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &spool, reputation.as_deref()).await {
                    tracing::debug!(error = %e, "admin connection ended");
                }
            });
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

async fn answer(stream: UnixStream, spool: &Spool, reputation: Option<&Reputation>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(Request::SpoolBackup) => {
            tracing::info!("admin request: spool backup");
            return stream_backup(spool, write).await;
        }
        Ok(request) => {
            tracing::info!(?request, "admin request");
            match request {
                Request::Reputation | Request::ReputationRelease { .. } => {
                    reputation_request(reputation, request).await
                }
                request => handle(spool, request).await.unwrap_or_else(Response::error),
            }
        }
        Err(e) => Response::error(format!("bad request: {e}")),
    };
    let mut text = serde_json::to_string(&response)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

/// Why an admin request failed, in words for the operator: a usage mistake or a message in
/// the wrong state is said plainly, without the storage layer's prefix.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Usage(String),
    #[error("no such submission {0}")]
    NoSuch(QueueId),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Copies the spool beside itself, then sends the answer line and the copy's bytes; the copy
/// is unlinked once open, so nothing is left behind whatever the client does.
async fn stream_backup(spool: &Spool, mut write: tokio::net::unix::OwnedWriteHalf) -> Result<()> {
    let copy = match spool.ledger.backup().await {
        Ok(Some(path)) => path,
        Ok(None) => {
            let e = "this spool backend has no file to back up (AWS: use its own backups)";
            return send_line(&mut write, &Response::error(e)).await;
        }
        Err(e) => return send_line(&mut write, &Response::error(e)).await,
    };
    let file = tokio::fs::File::open(&copy).await;
    let _ = std::fs::remove_file(&copy);
    let mut file = file.with_context(|| format!("opening {}", copy.display()))?;
    let bytes = file.metadata().await?.len();
    let head = Response {
        backup_bytes: Some(bytes),
        ..Default::default()
    };
    send_line(&mut write, &head).await?;
    tokio::io::copy(&mut file, &mut write).await?;
    write.shutdown().await?;
    Ok(())
}

async fn send_line(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> Result<()> {
    let mut text = serde_json::to_string(response)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

fn parse_id(id: &str) -> Result<QueueId, AdminError> {
    id.parse().map_err(|_| {
        AdminError::Usage(format!(
            "not a queue id: {id} (26 characters, as in \"queued as …\" and `outbox queue list`)"
        ))
    })
}

/// The states each action applies to, for the operator's error text.
fn applies_to(action: &Action) -> &'static str {
    match action {
        Action::Hold | Action::Park { .. } => "queued messages",
        Action::Release | Action::Unpark { .. } => "held messages",
        Action::RetryNow => "queued messages",
        Action::SendNow => "queued or held messages",
        Action::Redrive => "dead letters",
        Action::Delete => "queued, held or dead messages",
        Action::Cancel { .. } => "queued or held messages",
    }
}

/// `action` on one id; a submission in a state it does not apply to is named with its state.
async fn act_on_one(spool: &Spool, id: QueueId, action: Action) -> Result<(), AdminError> {
    let what = applies_to(&action);
    match spool.queue.act(id, action).await {
        Err(SpoolError::NotFound(_)) => match spool.ledger.get(id).await? {
            Some(record) => Err(AdminError::Usage(format!(
                "submission {id} is {}: this applies to {what} only",
                format!("{:?}", record.state).to_lowercase()
            ))),
            None => Err(AdminError::NoSuch(id)),
        },
        r => Ok(r?),
    }
}

/// Answers one request: the socket's handler, and the operator console's (one implementation of
/// every queue, dead-letter and suppression command).
pub async fn handle(spool: &Spool, request: Request) -> Result<Response, AdminError> {
    let ledger = &spool.ledger;
    let mut response = Response::default();
    match request {
        Request::QueueList {
            state,
            account,
            recipient,
        } => {
            let recipient = recipient.map(|r| r.to_lowercase());
            response.records = ledger
                .in_state(state.unwrap_or(State::Queued), MAX_LISTED)
                .await?
                .into_iter()
                .filter(|r| {
                    account.as_ref().is_none_or(|a| &r.job.login == a)
                        && recipient.as_ref().is_none_or(|want| {
                            r.job.recipients.iter().any(|x| x.to_lowercase() == *want)
                        })
                })
                .collect();
        }
        Request::QueueShow { id } => {
            let id = parse_id(&id)?;
            response.records = vec![ledger.get(id).await?.ok_or(AdminError::NoSuch(id))?];
        }
        Request::QueueRetry { id, all } => {
            response.changed = act_on(spool, id, all, Listing::Queued, Action::RetryNow).await?;
        }
        Request::QueueHold { id, all } => {
            response.changed = act_on(spool, id, all, Listing::Queued, Action::Hold).await?;
        }
        Request::QueueRelease { id, all } => {
            response.changed = act_on(spool, id, all, Listing::Held, Action::Release).await?;
        }
        Request::QueueSendNow { id } => {
            act_on_one(spool, parse_id(&id)?, Action::SendNow).await?;
            response.changed = 1;
        }
        Request::QueueDelete { id } => {
            act_on_one(spool, parse_id(&id)?, Action::Delete).await?;
            response.changed = 1;
        }
        Request::DlqList => response.records = ledger.in_state(State::Dead, MAX_LISTED).await?,
        Request::DlqRedrive { id, all } => {
            response.changed = act_on(spool, id, all, Listing::Dead, Action::Redrive).await?;
        }
        Request::DlqPurge => response.changed = ledger.purge().await?.dead,
        Request::QueueCompact => {
            response.compacted = Some(ledger.compact(true).await?.ok_or_else(|| {
                AdminError::Usage("this spool backend has no file to compact".into())
            })?)
        }
        // `answer` streams it instead.
        Request::SpoolBackup => {
            return Err(AdminError::Usage(
                "a backup is streamed, not answered".into(),
            ))
        }
        Request::SuppressionList => response.suppressions = ledger.suppressions().await?,
        Request::SuppressionAdd {
            address,
            class,
            account,
            reason,
            days,
        } => {
            let class = class.to_lowercase();
            if class != ALL_CLASSES && MessageClass::parse(&class).is_none() {
                return Err(AdminError::Usage(format!(
                    "unknown class {class}: transactional, mailing_list, bulk or *"
                )));
            }
            let now = crate::clock::SystemClock.now_ms();
            let expires_ms = days.map(|d| now + d * 86_400_000);
            let reason = reason.unwrap_or_else(|| "added by the operator".into());
            ledger
                .suppress(Suppression::new(
                    &address, &account, &class, reason, now, expires_ms,
                ))
                .await?;
            response.changed = 1;
        }
        Request::SuppressionRemove {
            address,
            class,
            account,
        } => {
            response.changed = u64::from(ledger.unsuppress(address, account, class).await?);
        }
        Request::Reputation | Request::ReputationRelease { .. } => {
            return Err(AdminError::Usage("not a spool request".into()))
        }
    }
    Ok(response)
}

/// `outbox reputation …`.
async fn reputation_request(reputation: Option<&Reputation>, request: Request) -> Response {
    let Some(reputation) = reputation else {
        return Response::error("reputation figures are not available on this server");
    };
    let mut response = Response::default();
    match request {
        Request::ReputationRelease { class, identity } => {
            let Some(class) = MessageClass::parse(&class) else {
                return Response::error(format!(
                    "unknown class {class}: transactional, mailing_list or bulk"
                ));
            };
            match reputation.release(HoldTarget { identity, class }).await {
                Ok(decision) => response.decision = Some(decision),
                Err(e) => return Response::error(e),
            }
        }
        _ => response.reputation = Some(reputation.report()),
    }
    response
}

/// The ids a command applies to: the one given, or every one in `all`'s listing.
/// Applies `action` to one message, or to every message in `which` (all of them, not a
/// listing's first page); with `all`, one that left the list meanwhile (sent while the command
/// ran) is skipped, not an error. Returns how many changed.
async fn act_on(
    spool: &Spool,
    id: Option<String>,
    all: bool,
    which: Listing,
    action: Action,
) -> Result<u64, AdminError> {
    let ids = match (id, all) {
        (Some(id), false) => {
            act_on_one(spool, parse_id(&id)?, action).await?;
            return Ok(1);
        }
        (None, true) => spool.queue.list(which, usize::MAX).await?,
        _ => return Err(AdminError::Usage("give a queue id or --all".into())),
    };
    let mut changed = 0;
    for id in ids {
        match spool.queue.act(id, action.clone()).await {
            Ok(()) => changed += 1,
            Err(SpoolError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(changed)
}

/// The client side: one request, one answer.
pub async fn request(socket: &Path, request: &Request) -> Result<Response> {
    Ok(exchange(socket, request).await?.0)
}

/// Sends `request` and reads the answer line; the reader is left where the answer ended
/// (a backup's bytes follow it).
async fn exchange(
    socket: &Path,
    request: &Request,
) -> Result<(Response, BufReader<tokio::net::unix::OwnedReadHalf>)> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "connecting to {} (is `outbox serve` running?)",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let response: Response = serde_json::from_str(&line).context("reading the daemon's answer")?;
    if let Some(error) = &response.error {
        anyhow::bail!("{error}");
    }
    Ok((response, reader))
}

/// The client side of [`Request::SpoolBackup`]: writes the daemon's copy of the spool to
/// `dest` (mode 0600, fsync'd) and returns its length. A short read is an error: the file is
/// removed rather than left truncated.
pub async fn backup(socket: &Path, dest: &Path) -> Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let (response, mut reader) = exchange(socket, &Request::SpoolBackup).await?;
    let expected = response
        .backup_bytes
        .context("the daemon's answer has no backup length")?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("creating {}", dest.display()))?;
    let mut out = tokio::fs::File::from_std(file);
    let received = async {
        let got = tokio::io::copy(&mut (&mut reader).take(expected), &mut out).await?;
        anyhow::ensure!(
            got == expected,
            "the daemon sent {got} of {expected} bytes (did it stop?)"
        );
        out.sync_all().await?;
        Ok(got)
    }
    .await;
    if received.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    received.with_context(|| format!("writing {}", dest.display()))
}
