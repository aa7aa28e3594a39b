//! The `dir` transport, the development default: each message becomes `<queue id>.eml` in a
//! folder, with its envelope beside it in `<queue id>.json`. Both are written to a temporary
//! name, fsync'd and renamed (the `.json` first), so a reader that sees the `.eml` sees both
//! complete.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Delivery, OutboundMessage, SendFuture, Transport};

pub struct DirTransport {
    path: PathBuf,
}

impl DirTransport {
    pub fn new(path: PathBuf) -> Self {
        DirTransport { path }
    }
}

fn write_atomically<'a>(
    dir: &Path,
    name: &str,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    for piece in pieces {
        file.write_all(piece)?;
    }
    file.sync_data()?;
    std::fs::rename(&tmp, dir.join(name))
}

fn deliver(dir: &Path, message: &OutboundMessage) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    let id = message.job.id.to_string();
    let envelope = serde_json::json!({
        "queue_id": id,
        "mail_from": message.mail_from,
        "recipients": message.recipients,
        "account": message.job.login,
        "identity_id": message.job.identity_id,
        "message_class": message.job.message_class,
    });
    write_atomically(
        dir,
        &format!("{id}.json"),
        [envelope.to_string().as_bytes()],
    )?;
    write_atomically(dir, &format!("{id}.eml"), message.mime.pieces())?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(format!("{id}.eml"))
}

impl Transport for DirTransport {
    fn name(&self) -> &'static str {
        "dir"
    }

    fn send(&self, message: Arc<OutboundMessage>) -> SendFuture<'_> {
        Box::pin(async move {
            let dir = self.path.clone();
            match tokio::task::spawn_blocking(move || deliver(&dir, &message)).await {
                Ok(Ok(name)) => Delivery::Sent { provider_id: name },
                // A full or unwritable disk is an operator's problem to fix: keep the message.
                Ok(Err(e)) => Delivery::Retry {
                    reason: format!("writing to {}: {e}", self.path.display()),
                    after: None,
                },
                Err(e) => Delivery::Retry {
                    reason: format!("dir transport task failed: {e}"),
                    after: None,
                },
            }
        })
    }
}
