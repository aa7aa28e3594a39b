//! The many-node backend: the queue on Amazon SQS, message bytes on Amazon S3, submission
//! records on Amazon DynamoDB — managed engines shared by any number of Outbox nodes.
//!
//! **The ledger decides, SQS delivers.** Each queued submission has a copy (its id) in the
//! SQS queue; a node that receives a copy *claims* the record with a conditional DynamoDB
//! write (queued, due, no lease in force) and only then sends. So whatever SQS does — a copy
//! received twice, a visibility timeout that ran out on a slow node, a stale copy after a
//! hold — a record has one holder at a time and a stale lease token cannot settle. What SQS
//! cannot express is solved in the ledger and documented in the README ("Several nodes"):
//!
//! - *Delays beyond SQS's 15 minutes* (`sendAt`, HOLDFOR, long backoff): a copy received
//!   before its record is due is sent again with the remaining delay (at most 900 s) and the
//!   old one deleted, so waiting never spends SQS receives.
//! - *Release without spending an attempt*: a fresh copy replaces the leased one (SQS counts
//!   receives per copy); the record's own `receive_count` is what counts attempts.
//! - *Hold, cancel, delete, retry-now, redrive by id*: the record changes; a copy that no
//!   longer matches is deleted when it is received; release, retry-now and redrive send a new
//!   copy (two copies of one record are harmless: the claim lets one through).
//! - *Dead letters*: the ledger's `dead` state is the dead-letter queue (listed, redriven and
//!   purged like the embedded one's). The SQS queue's redrive policy (maxReceiveCount 5) still
//!   catches a copy that keeps coming back without an outcome (a node crashing on it); the
//!   janitor folds what lands in the SQS dead-letter queue into the ledger.
//! - *Depth*: SQS's approximate counts for the queue, ledger counts for held and dead.
//!
//! An acknowledgement (SMTP 250) means: S3 PUT done, record written, SQS SendMessage done.

mod activity;
mod feed;
mod items;
mod ledger;
mod queue;
mod setup;

pub use setup::init;

use std::sync::Arc;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::Mutex;

use super::{Blobs, Fut, Spool, SpoolError, SpoolOptions};
use crate::clock::Clock;
use crate::config::AwsSpoolConfig;
use crate::domain::QueueId;
use crate::rope::Rope;

/// The AWS backend; one value serves as all three seams.
pub struct AwsSpool {
    sqs: aws_sdk_sqs::Client,
    s3: aws_sdk_s3::Client,
    ddb: aws_sdk_dynamodb::Client,
    queue_url: String,
    dead_letter_url: String,
    bucket: String,
    prefix: String,
    table: String,
    options: SpoolOptions,
    clock: Arc<dyn Clock>,
    rng: Mutex<StdRng>,
}

/// The SDK clients for the spool: the standard credential chain and endpoint
/// (`AWS_ENDPOINT_URL`), the SDK's standard retries (spool calls are safe to repeat: every
/// write is conditional or idempotent), bounded call time.
pub async fn clients(
    config: &AwsSpoolConfig,
) -> (
    aws_sdk_sqs::Client,
    aws_sdk_s3::Client,
    aws_sdk_dynamodb::Client,
) {
    use aws_config::timeout::TimeoutConfig;
    use aws_config::{BehaviorVersion, Region};
    use std::time::Duration;
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            // Long polls wait up to 20 s; the call may take that long and a bit.
            .operation_timeout(Duration::from_secs(config.timeout_secs.max(25)))
            .connect_timeout(Duration::from_secs(10))
            .build(),
    );
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    let shared = loader.load().await;
    // Path-style S3 addressing works everywhere (and is what a local endpoint understands).
    let s3 = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .build();
    (
        aws_sdk_sqs::Client::new(&shared),
        aws_sdk_s3::Client::from_conf(s3),
        aws_sdk_dynamodb::Client::new(&shared),
    )
}

/// Connects to the resources `config` names (they must exist: `outbox aws init`).
pub async fn open(
    config: &AwsSpoolConfig,
    options: SpoolOptions,
    clock: Arc<dyn Clock>,
) -> Result<Spool, SpoolError> {
    let spool = Arc::new(AwsSpool::connect(config, options, clock).await?);
    Ok(Spool {
        queue: spool.clone(),
        blobs: spool.clone(),
        ledger: spool,
    })
}

impl AwsSpool {
    pub async fn connect(
        config: &AwsSpoolConfig,
        options: SpoolOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<AwsSpool, SpoolError> {
        let (sqs, s3, ddb) = clients(config).await;
        let url = |name: String| {
            let sqs = sqs.clone();
            async move {
                sqs.get_queue_url()
                    .queue_name(&name)
                    .send()
                    .await
                    .map_err(|e| aws_error(&format!("SQS queue {name}"), e))?
                    .queue_url
                    .ok_or_else(|| SpoolError::Storage(format!("SQS queue {name} has no URL")))
            }
        };
        let queue_url = url(config.queue.clone()).await?;
        let dead_letter_url = url(config.dead_letter_queue.clone()).await?;
        ddb.describe_table()
            .table_name(&config.table)
            .send()
            .await
            .map_err(|e| aws_error(&format!("DynamoDB table {}", config.table), e))?;
        let rng = StdRng::seed_from_u64(options.jitter_seed);
        Ok(AwsSpool {
            sqs,
            s3,
            ddb,
            queue_url,
            dead_letter_url,
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            table: config.table.clone(),
            options,
            clock,
            rng: Mutex::new(rng),
        })
    }

    /// `<prefix><two random characters>/<id>.eml`: ids begin with the time, and S3 scales
    /// request rates per key prefix, so the prefix is taken from the id's random end (1,024
    /// prefixes) rather than its time-ordered start.
    fn blob_key(&self, id: QueueId) -> String {
        let text = id.to_string();
        let spread = &text[text.len() - 2..];
        format!("{}{spread}/{text}.eml", self.prefix)
    }

    async fn random(&self) -> u64 {
        use rand::Rng;
        self.rng.lock().await.random()
    }
}

/// A storage error naming what failed; the SDK's chain is logged, not shown to clients.
pub(crate) fn aws_error<E, R>(what: &str, err: SdkError<E, R>) -> SpoolError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let code = err.code().map(str::to_string);
    tracing::warn!(
        what,
        error = %aws_sdk_dynamodb::error::DisplayErrorContext(&err),
        "AWS spool call failed"
    );
    SpoolError::Storage(match code {
        Some(code) => format!("{what}: {code}"),
        None => format!("{what}: AWS unreachable or not answering"),
    })
}

impl Blobs for AwsSpool {
    fn put(&self, id: QueueId, chunks: Vec<Bytes>) -> Fut<'_, ()> {
        Box::pin(async move {
            // The chunks go as they are, not joined into one more copy; S3 gets the length
            // up front.
            let mime: Rope = chunks.into_iter().collect();
            let length = mime.len() as i64;
            let body = SdkBody::retryable(move || SdkBody::from_body_1_x(mime.body()));
            self.s3
                .put_object()
                .bucket(&self.bucket)
                .key(self.blob_key(id))
                .content_type("message/rfc822")
                .content_length(length)
                .body(ByteStream::new(body))
                .send()
                .await
                .map_err(|e| aws_error("S3 PUT", e))?;
            Ok(())
        })
    }

    fn get(&self, id: QueueId) -> Fut<'_, Bytes> {
        Box::pin(async move {
            let got = self
                .s3
                .get_object()
                .bucket(&self.bucket)
                .key(self.blob_key(id))
                .send()
                .await;
            match got {
                Ok(mut out) => {
                    // Into one buffer of the announced size as the body arrives, each chunk
                    // dropped once copied: collecting the chunks and then joining them would
                    // hold a large message twice.
                    let announced = out.content_length().unwrap_or(0).max(0) as usize;
                    let mut mime = Vec::with_capacity(announced);
                    while let Some(chunk) = out.body.next().await {
                        let chunk =
                            chunk.map_err(|e| SpoolError::Storage(format!("S3 GET body: {e}")))?;
                        mime.extend_from_slice(&chunk);
                    }
                    Ok(Bytes::from(mime))
                }
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                    Err(SpoolError::NotFound(id))
                }
                Err(e) => Err(aws_error("S3 GET", e)),
            }
        })
    }

    fn delete(&self, id: QueueId) -> Fut<'_, ()> {
        Box::pin(async move {
            self.s3
                .delete_object()
                .bucket(&self.bucket)
                .key(self.blob_key(id))
                .send()
                .await
                .map_err(|e| aws_error("S3 DELETE", e))?;
            Ok(())
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
