//! Configuration: one TOML file, validated at load.
//!
//! Layering (STYLE habit 10): built-in defaults (the `Default` impls below), then the file.
//! Unknown keys are errors (`deny_unknown_fields`), relative paths resolve against the folder
//! of the file, and every limit carries the RFC or SES rule it comes from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The whole configuration, as read from `outbox.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name this server announces in the SMTP greeting and `Received` headers.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Domain added to a bare local name from `sendmail` (`root`, cron's MAILTO) in the
    /// envelope and the header's address fields; unset, such an address is refused.
    #[serde(default)]
    pub default_domain: Option<String>,
    /// Folder holding all state: the spool database (queue, submissions, blobs) and, later,
    /// the suppression list. Relative to the config file.
    pub state_dir: PathBuf,
    /// The admin socket `outbox queue …` talks to; default `<state_dir>/admin.sock`. Mode
    /// 0660: the service's user and group may administer the queue.
    #[serde(default)]
    pub admin_socket: Option<PathBuf>,
    /// The local submission socket `outbox sendmail` talks to; default
    /// `<state_dir>/submit.sock`. Mode 0666: anyone may connect, and the caller's uid (checked
    /// by the kernel, SO_PEERCRED) decides the account (`unix_users`).
    #[serde(default)]
    pub submit_socket: Option<PathBuf>,
    #[serde(default)]
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub sender: SenderConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The HTTPS listener for JMAP and the SNS feedback endpoint.
    #[serde(default)]
    pub http: HttpConfig,
    /// SES feedback (bounces, complaints, deliveries) over SNS, and the suppression policy.
    #[serde(default)]
    pub feedback: FeedbackConfig,
    /// Bounce and complaint rates, and the guard that holds a class (see README "Reputation").
    #[serde(default)]
    pub reputation: crate::reputation::ReputationConfig,
    #[serde(default, rename = "account")]
    pub accounts: Vec<AccountConfig>,
    /// DKIM keys: mail whose envelope sender is at `domain` is signed at send time.
    #[serde(default)]
    pub dkim: Vec<DkimConfig>,
    /// The operator console on the HTTPS listener; off unless given.
    #[serde(default)]
    pub console: Option<crate::console::ConsoleConfig>,
}

/// One DKIM signing key (RFC 6376; ed25519 per RFC 8463).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    pub domain: String,
    pub selector: String,
    /// PEM: PKCS#8 (RSA or Ed25519) or PKCS#1 RSA. The algorithm follows the key.
    pub private_key_file: PathBuf,
}

fn default_hostname() -> String {
    "localhost".into()
}

/// SMTP submission listeners and the per-connection limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Ports speaking plain SMTP that must be upgraded with STARTTLS before AUTH (RFC 6409, the
    /// usual 587). Port 0 picks a free port; the bound address is announced on stdout.
    pub submission_listen: Vec<SocketAddr>,
    /// Ports speaking implicit TLS (RFC 8314 "submissions", the usual 465).
    pub submissions_listen: Vec<SocketAddr>,
    /// Largest message accepted, in octets (SIZE, RFC 1870). SES v2 accepts 40 MB messages.
    pub max_message_size: usize,
    /// Most recipients per message. SES accepts at most 50 destinations per SendEmail.
    pub max_recipients: usize,
    /// Longest hold a client may ask for with FUTURERELEASE (RFC 4865), in seconds; 0 turns
    /// the extension off. Our spool has no 15-minute ceiling (SQS's DelaySeconds has).
    pub max_hold_secs: u64,
    /// Longest text line, CRLF included (RFC 5321 §4.5.3.1.6: 1000 octets).
    pub max_line_length: usize,
    /// Longest command line, CRLF included. RFC 5321 §4.5.3.1.4 sets 512 and lets extensions
    /// grow it; AUTH PLAIN initial responses (RFC 4954 §4) need the room.
    pub max_command_length: usize,
    /// Time allowed to complete one command line, however slowly its bytes arrive
    /// (RFC 5321 §4.5.3.2.7 gives the server 5 minutes).
    pub command_timeout_secs: u64,
    /// Time allowed for a whole DATA or BDAT body (RFC 5321 §4.5.3.2.5/6: 3 min per block,
    /// 10 min for the terminator; one budget for the whole body stops byte-dribbling).
    pub data_timeout_secs: u64,
    /// Longest life of one connection, whatever it does (a total timeout: a client cannot
    /// keep a slot by trickling valid commands).
    pub session_timeout_secs: u64,
    /// Time allowed for a TLS handshake (implicit TLS or after STARTTLS).
    pub tls_handshake_timeout_secs: u64,
    /// Connections served at once; later ones get 421 4.7.0 and are closed.
    pub max_connections: usize,
    /// Connections served at once from one client IP.
    pub max_connections_per_ip: usize,
    /// Protocol errors tolerated on one connection before 421 and close (like Postfix's
    /// smtpd_hard_error_limit).
    pub max_errors: u32,
    /// Failed AUTH attempts tolerated on one connection before 421 and close.
    pub max_auth_failures: u32,
    /// Failed AUTH attempts from one IP, within `auth_failure_window_secs`, after which AUTH from
    /// that IP is refused for `auth_cooldown_secs`, even with the right password.
    pub auth_failures_per_ip: u32,
    pub auth_failure_window_secs: u64,
    pub auth_cooldown_secs: u64,
    /// Every AUTH answer, success or failure, takes at least this long, so timing tells nothing
    /// about which accounts exist.
    pub auth_min_duration_ms: u64,
    /// A successful login is remembered this long, so the same client logging in again skips
    /// the argon2 check (failures are never remembered; a changed password misses). 0: off.
    pub auth_cache_secs: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            submission_listen: vec!["127.0.0.1:2587".parse().unwrap()],
            submissions_listen: vec!["127.0.0.1:2465".parse().unwrap()],
            max_message_size: 40 * 1024 * 1024,
            max_recipients: 50,
            max_hold_secs: 30 * 86_400,
            max_line_length: 1000,
            max_command_length: 2048,
            command_timeout_secs: 300,
            data_timeout_secs: 600,
            session_timeout_secs: 1800,
            tls_handshake_timeout_secs: 10,
            max_connections: 1000,
            max_connections_per_ip: 100,
            max_errors: 10,
            max_auth_failures: 3,
            auth_failures_per_ip: 10,
            auth_failure_window_secs: 600,
            auth_cooldown_secs: 900,
            auth_min_duration_ms: 200,
            auth_cache_secs: 300,
        }
    }
}

/// TLS material. With `generate_dev_cert`, a missing certificate is created on first start: a
/// throwaway CA (`ca`) and a server certificate for `localhost`/127.0.0.1 signed by it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where the development CA certificate is written (give it to test clients).
    pub ca: PathBuf,
    pub generate_dev_cert: bool,
    /// Order the certificate from an ACME CA instead (`cert`, `key`, `ca` and
    /// `generate_dev_cert` are then unused); see [`crate::acme`].
    pub acme: Option<crate::acme::AcmeConfig>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: "../certs/dev-cert.pem".into(),
            key: "../certs/dev-key.pem".into(),
            ca: "../certs/dev-ca.pem".into(),
            generate_dev_cert: true,
            acme: None,
        }
    }
}

/// The durable queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// fsync every commit before acknowledging (off only for measuring its cost).
    pub fsync: bool,
    /// Most submissions waiting in the queue; beyond it new mail gets 452 4.3.1.
    pub max_messages: u64,
    /// Most octets of queued MIME; beyond it new mail gets 452 4.3.1.
    pub max_bytes: u64,
    /// Free space the state folder's disk must keep; below it new mail gets 452 4.3.1.
    pub min_free_disk_bytes: u64,
    /// Memory the embedded spool (redb) may use to cache its pages, read and written
    /// (16 MiB: the queue's hot pages fit; message bytes are read once and need no cache).
    pub cache_bytes: u64,
    /// How long a sender holds a message before another may take it (SQS visibility timeout).
    pub visibility_timeout_secs: u64,
    /// Deliveries tried before a message moves to the dead-letter queue (SQS maxReceiveCount;
    /// the seed design uses 5).
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt, with jitter, up to `retry_max_secs`.
    pub retry_base_secs: u64,
    pub retry_max_secs: u64,
    /// Days a dead letter is kept before it is purged (SQS's 14-day maximum retention).
    pub dead_letter_retention_days: u64,
    /// Days a finished submission (sent, delivered, bounced, complained, failed) is kept —
    /// its record, per-recipient outcomes and SES message id — before it is purged. Feedback
    /// arriving later matches nothing (SES reports within days; complaints can take longer).
    pub retention_days: u64,
    /// Where the queue, the message bytes and the submission records live: `redb` (one
    /// machine, the embedded default) or `aws` (SQS + S3 + DynamoDB, shared by many nodes).
    pub backend: SpoolBackend,
    /// The AWS resources of `backend = "aws"` (`outbox aws init` creates them).
    pub aws: Option<AwsSpoolConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolBackend {
    #[default]
    Redb,
    Aws,
}

/// The shared spool on AWS: names, not ARNs; region and endpoint come from the standard AWS
/// chain (`AWS_REGION`, `AWS_ENDPOINT_URL`, …) unless `region` is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSpoolConfig {
    pub region: Option<String>,
    /// SQS standard queue of due messages.
    pub queue: String,
    /// Its dead-letter queue (the redrive policy's target).
    pub dead_letter_queue: String,
    /// S3 bucket of message bytes, under `prefix`.
    pub bucket: String,
    #[serde(default = "default_spool_prefix")]
    pub prefix: String,
    /// DynamoDB table of submission records, suppressions and feedback ids.
    pub table: String,
    /// Seconds an AWS call may take before it counts as failed.
    #[serde(default = "default_aws_timeout")]
    pub timeout_secs: u64,
}

fn default_spool_prefix() -> String {
    "spool/".into()
}

fn default_aws_timeout() -> u64 {
    20
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            fsync: true,
            max_messages: 100_000,
            max_bytes: 10 * 1024 * 1024 * 1024,
            min_free_disk_bytes: 512 * 1024 * 1024,
            cache_bytes: crate::spool::DEFAULT_CACHE_BYTES,
            visibility_timeout_secs: 300,
            max_attempts: 5,
            retry_base_secs: 30,
            retry_max_secs: 3600,
            dead_letter_retention_days: 14,
            retention_days: 30,
            backend: SpoolBackend::Redb,
            aws: None,
        }
    }
}

/// The sender workers and the transport they hand messages to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderConfig {
    /// Concurrent sender tasks, each with one message in flight. A send mostly waits (relay
    /// or AWS round trips, the spool's commit), so more tasks than cores pay: with the `smtp`
    /// transport on 2 cores, 16 delivered 1.7x what 4 did (notes of issue 13).
    pub workers: usize,
    /// Octets of MIME being sent at once across all workers, so a burst of 40 MB messages
    /// cannot exhaust memory. A larger message still goes, alone.
    pub max_in_flight_bytes: u64,
    pub transport: TransportConfig,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            workers: 16,
            max_in_flight_bytes: 256 * 1024 * 1024,
            transport: TransportConfig::Dir {
                path: "../outbox-mail".into(),
            },
        }
    }
}

/// Which transport the senders use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum TransportConfig {
    /// Write each message as `<queue id>.eml` (and its envelope as `<queue id>.json`) into `path`.
    Dir { path: PathBuf },
    /// Amazon SES v2 `SendEmail` with raw content. Credentials, region and endpoint come from
    /// the standard AWS chain (`AWS_REGION`, `AWS_ENDPOINT_URL`, profiles, instance roles).
    Ses(SesConfig),
    /// An SMTP smarthost (SES's SMTP interface, a corporate relay), over pooled connections.
    Smtp(SmarthostConfig),
    /// For a downstream sender (e.g. a Lambda): the MIME goes to S3, the submission record
    /// (with the object's location, not the MIME) to an SQS queue.
    Sqs(SqsConfig),
}

impl TransportConfig {
    /// Whether messages end up at SES: the `ses` transport, and `sqs`, which feeds an SES
    /// sender. SES's content rules (ASCII envelopes, attachment types) then apply.
    pub fn ses_bound(&self) -> bool {
        matches!(self, TransportConfig::Ses(_) | TransportConfig::Sqs(_))
    }

    /// SES cannot carry SMTPUTF8: ASCII envelopes with IDN domains as A-labels. The others
    /// carry UTF-8 addresses.
    pub fn address_policy(&self) -> crate::address::AddressPolicy {
        use crate::address::AddressPolicy;
        if self.ses_bound() {
            AddressPolicy::Ascii
        } else {
            AddressPolicy::Utf8
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsConfig {
    pub queue_url: String,
    pub bucket: String,
    /// Object key prefix; the key is `<prefix><queue id>.eml`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Path-style S3 addressing (S3-compatible stores, moto).
    #[serde(default)]
    pub s3_force_path_style: bool,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default = "default_ses_timeout")]
    pub timeout_secs: u64,
}

fn default_key_prefix() -> String {
    "outbox/".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmarthostTls {
    /// STARTTLS is required (the connection fails without it).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS: only for a relay on loopback or a trusted private link.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmarthostConfig {
    pub host: String,
    #[serde(default = "default_smarthost_port")]
    pub port: u16,
    #[serde(default = "default_smarthost_tls")]
    pub tls: SmarthostTls,
    /// AUTH user; with it, the password comes from `password_file` or the environment
    /// variable named by `password_env` (never from this file).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// A PEM CA to trust instead of the system's roots (private relays, tests).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name sent in EHLO.
    #[serde(default)]
    pub helo_name: Option<String>,
    /// Seconds the relay may take for any one reply, connect or write.
    #[serde(default = "default_ses_timeout")]
    pub timeout_secs: u64,
    /// Connections open to the relay at once, each carrying one message at a time and reused
    /// for the next. More than `sender.workers` is never used.
    #[serde(default = "default_smarthost_connections")]
    pub max_connections: usize,
    /// Seconds an unused connection is kept open for the next message, then closed (QUIT).
    /// Postfix keeps its own for 2 s (`smtp_connection_cache_time_limit`); relays drop idle
    /// clients after their command timeout (RFC 5321 §4.5.3.2.7: at least 5 minutes).
    #[serde(default = "default_smarthost_idle")]
    pub idle_timeout_secs: u64,
}

fn default_smarthost_connections() -> usize {
    16
}

fn default_smarthost_idle() -> u64 {
    10
}

fn default_smarthost_port() -> u16 {
    587
}

fn default_smarthost_tls() -> SmarthostTls {
    SmarthostTls::Starttls
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SesConfig {
    /// Overrides the region from the AWS chain.
    #[serde(default)]
    pub region: Option<String>,
    /// The domain of the `Message-ID` SES gives what it sends (it replaces the message's own);
    /// default from the region, see [`crate::transport::ses::message_id_domain`]. Recorded
    /// so the JMAP Sent copy carries the Message-ID recipients see.
    #[serde(default)]
    pub message_id_domain: Option<String>,
    /// Configuration set for every message unless the identity names its own.
    #[serde(default)]
    pub configuration_set: Option<String>,
    /// `FromEmailAddressIdentityArn`, for sending authorization across accounts.
    #[serde(default)]
    pub from_identity_arn: Option<String>,
    /// Messages per second across all senders. 0: read `MaxSendRate` with `GetAccount` at
    /// start (SES's per-account sending quota).
    #[serde(default)]
    pub max_send_rate: f64,
    /// Seconds before an SES call is abandoned and retried.
    #[serde(default = "default_ses_timeout")]
    pub timeout_secs: u64,
    /// Largest message SES takes, as sent: "40 MB per message (after base64 encoding)" (SES
    /// quotas), read as 40,000,000 octets to be safe. SMTP SIZE and the JMAP limits are held
    /// [`ADDITIONS_RESERVE`] below it; the final message is checked against it before SendEmail.
    #[serde(default = "default_ses_max_message_size")]
    pub max_message_size: usize,
    /// Static SES `EmailTags` on every message, after the seven built-in ones (e.g.
    /// `tags = { env = "prod" }`); an identity's `ses_tags` of the same name win.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

fn default_ses_timeout() -> u64 {
    60
}

fn default_ses_max_message_size() -> usize {
    40_000_000
}

/// Octets kept free under the provider's message limit for what Outbox adds after a client's
/// size was checked: the `Received` trace (under 1 KB with a 255-octet HELO), `Date` and
/// `Message-ID`, the identity's signature in the text and HTML parts (quoted-printable can
/// triple it), a `DKIM-Signature` (about 1 KB for RSA-4096). What still does not fit (a part
/// re-encoded to carry the signature) is failed with its reason before the hand-off.
pub const ADDITIONS_RESERVE: usize = 64 * 1024;

impl TransportConfig {
    /// The largest message the provider accepts as sent, if it has a limit.
    pub fn max_message_size(&self) -> Option<usize> {
        match self {
            TransportConfig::Ses(ses) => Some(ses.max_message_size),
            _ => None,
        }
    }
}

/// The plain-HTTP listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Empty turns the listener off. Keep it on loopback or a private network.
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Some("127.0.0.1:9325".parse().unwrap()),
        }
    }
}

/// SES feedback: which SNS topics are trusted, how long suppressions last, where to poll.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    /// SNS topic ARNs whose messages are accepted (exact match); empty refuses every message.
    pub topics: Vec<String>,
    /// SNS messages POSTed over HTTPS older than this (their `Timestamp`) are refused as
    /// replays. Not applied to messages read from SQS, which may be days old after an outage.
    pub max_message_age_secs: u64,
    /// A hard bounce suppresses the address (for that account and class) this long; 0: until
    /// removed. SES's own account-level list keeps entries for up to 14 days.
    pub bounce_suppression_days: u64,
    /// A complaint suppresses the address (for that account and class) this long; 0: until
    /// removed.
    pub complaint_suppression_days: u64,
    /// With the `dir` transport, mail to the SES mailbox-simulator addresses
    /// (`success@`, `bounce@`, `ooto@`, `complaint@`, `suppressionlist@simulator.amazonses.com`)
    /// produces the events SES would, through the same feedback path.
    pub simulate: bool,
    /// Poll this SQS queue (subscribed to the SES topics) instead of, or as well as, receiving
    /// SNS over HTTPS.
    pub sqs: Option<FeedbackSqsConfig>,
    /// TESTS ONLY: fetch SNS certificates and confirm subscriptions at `base_url` instead of
    /// `https://sns.<region>.amazonaws.com`, trusting only `ca_file`. The server refuses to start
    /// with it unless the environment has `OUTBOX_ALLOW_TEST_TRUST_OVERRIDE=yes`.
    pub test_trust_override: Option<TrustOverride>,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            topics: Vec::new(),
            max_message_age_secs: 3600,
            bounce_suppression_days: 14,
            complaint_suppression_days: 0,
            simulate: true,
            sqs: None,
            test_trust_override: None,
        }
    }
}

/// The environment variable (and value) that must accompany `feedback.test_trust_override`.
pub const TRUST_OVERRIDE_ENV: &str = "OUTBOX_ALLOW_TEST_TRUST_OVERRIDE";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustOverride {
    pub base_url: String,
    pub ca_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackSqsConfig {
    pub queue_url: String,
    #[serde(default)]
    pub region: Option<String>,
    /// The subscription delivers the SES event itself (SNS "raw message delivery"); otherwise
    /// each body is an SNS envelope, verified like an HTTPS one.
    #[serde(default)]
    pub raw_message_delivery: bool,
    /// Long-poll wait per ReceiveMessage (SQS allows up to 20).
    #[serde(default = "default_sqs_wait")]
    pub wait_secs: u64,
}

fn default_sqs_wait() -> u64 {
    20
}

/// The HTTPS listener (same certificate as SMTP) serving JMAP (`/.well-known/jmap`, `/jmap/…`)
/// and SNS feedback (`POST /sns`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Addresses to serve HTTPS on; empty turns the listener off.
    pub listen: Vec<SocketAddr>,
    /// The TLS handshake, and each request's headers (also the keep-alive idle limit), must
    /// complete within this many seconds.
    pub handshake_timeout_secs: u64,
    /// A connection is closed (after its current request) once it is this old.
    pub connection_lifetime_secs: u64,
    /// Open HTTPS connections at most (further ones wait in the kernel backlog).
    pub max_connections: usize,
    /// Open HTTPS connections from one client (an IPv4 address or an IPv6 /64) at most; more are
    /// closed at once, so one address cannot hold the whole `max_connections`.
    pub max_connections_per_ip: usize,
    /// A request body (JMAP request, upload, SNS message) must arrive within this time.
    pub body_timeout_secs: u64,
    /// After the first `handshake_timeout_secs` of a request body, it must keep arriving at this
    /// many octets per second on average (a slow dribble cannot hold a connection); 0: no floor.
    pub body_min_rate: u64,
    /// Largest JMAP API request body in octets (RFC 8620 §2 `maxSizeRequest`).
    pub max_request_size: usize,
    /// Largest JMAP upload in octets (RFC 8620 §2 `maxSizeUpload`); 0: `smtp.max_message_size`.
    pub max_upload_size: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: vec!["127.0.0.1:2443".parse().unwrap()],
            handshake_timeout_secs: 10,
            connection_lifetime_secs: 300,
            max_connections: 1000,
            max_connections_per_ip: 50,
            body_timeout_secs: 600,
            body_min_rate: 1024,
            max_request_size: 10_000_000,
            max_upload_size: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` for log collectors.
    pub format: String,
    /// A tracing filter, e.g. `info` or `outbox=debug`. `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// An account: who may log in, and which addresses it may send as.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The SMTP AUTH user name.
    pub login: String,
    /// An argon2id PHC string (`outbox passwd` prints one).
    #[serde(default)]
    pub password_hash: Option<String>,
    /// A file holding the PHC string, for secrets kept out of the config.
    #[serde(default)]
    pub password_hash_file: Option<PathBuf>,
    /// Local Unix users (names or numeric uids) whose programs may submit as this account
    /// through `outbox sendmail`; the daemon checks the caller's uid on the socket.
    #[serde(default)]
    pub unix_users: Vec<String>,
    #[serde(default = "default_tenant")]
    pub tenant_id: String,
    /// Defaults to the login.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Defaults to the login.
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default, rename = "identity")]
    pub identities: Vec<IdentityConfig>,
}

fn default_tenant() -> String {
    "default".into()
}

/// An address (`email`) or a whole domain (`domain`) an account may send as.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub text_signature: Option<String>,
    #[serde(default)]
    pub html_signature: Option<String>,
    /// SES configuration set for this identity's mail (overrides the transport's).
    #[serde(default)]
    pub configuration_set: Option<String>,
    /// Static SES `EmailTags` for this identity's mail, added to the built-in ones.
    #[serde(default)]
    pub ses_tags: std::collections::BTreeMap<String, String>,
}

impl Config {
    /// Where the local submission socket lives (resolved at load).
    pub fn submit_socket(&self) -> PathBuf {
        self.submit_socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("submit.sock"))
    }

    /// Every configured identity's id (reputation figures are reported per identity).
    pub fn identity_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .accounts
            .iter()
            .flat_map(|a| a.identities.iter().map(|i| i.id.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Where the admin socket lives (resolved at load).
    pub fn admin_socket(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("admin.sock"))
    }

    /// Reads, parses and validates a config file; relative paths become absolute against the
    /// file's folder.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let base = path
            .canonicalize()
            .with_context(|| format!("resolving {}", path.display()))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        Self::parse(&text, &base).with_context(|| format!("in config {}", path.display()))
    }

    /// Parses config text whose relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config> {
        let mut config: Config = toml::from_str(text)?;
        config.resolve_paths(base)?;
        config.validate()?;
        config.leave_room_for_additions();
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) -> Result<()> {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.state_dir);
        let socket = self
            .admin_socket
            .take()
            .unwrap_or_else(|| self.state_dir.join("admin.sock"));
        self.admin_socket = Some(socket);
        if let Some(p) = &mut self.admin_socket {
            abs(p);
        }
        let socket = self
            .submit_socket
            .take()
            .unwrap_or_else(|| self.state_dir.join("submit.sock"));
        self.submit_socket = Some(socket);
        if let Some(p) = &mut self.submit_socket {
            abs(p);
        }
        abs(&mut self.tls.cert);
        abs(&mut self.tls.key);
        abs(&mut self.tls.ca);
        if let Some(acme) = &mut self.tls.acme {
            acme.resolve_paths(base);
        }
        match &mut self.sender.transport {
            TransportConfig::Dir { path } => abs(path),
            TransportConfig::Ses(_) | TransportConfig::Sqs(_) => {}
            TransportConfig::Smtp(smtp) => {
                if let Some(p) = &mut smtp.password_file {
                    abs(p);
                }
                if let Some(p) = &mut smtp.ca_file {
                    abs(p);
                }
            }
        }
        for dkim in &mut self.dkim {
            abs(&mut dkim.private_key_file);
        }
        if let Some(o) = &mut self.feedback.test_trust_override {
            abs(&mut o.ca_file);
        }
        if let Some(console) = &mut self.console {
            console.resolve_paths(base)?;
        }
        for account in &mut self.accounts {
            if let Some(file) = &mut account.password_hash_file {
                abs(file);
                let hash = std::fs::read_to_string(&*file)
                    .with_context(|| format!("reading {}", file.display()))?;
                account.password_hash = Some(hash.trim().to_string());
            }
        }
        Ok(())
    }

    /// SMTP SIZE (RFC 1870), sendmail and JMAP accept at most the transport's limit less
    /// [`ADDITIONS_RESERVE`], so mail that gets 250 still fits once Outbox has added to it.
    fn leave_room_for_additions(&mut self) {
        if let Some(max) = self.sender.transport.max_message_size() {
            let room = max.saturating_sub(ADDITIONS_RESERVE);
            self.smtp.max_message_size = self.smtp.max_message_size.min(room);
        }
    }

    /// Every problem in a config file, for `check-config`: each TOML or type error (one
    /// per line: the line is set aside and the file read again, so a typo'd key does not hide
    /// the next one; serde's words translated where they mislead), then every value the
    /// validation refuses. The config is returned when it could be read at all.
    pub fn check_file(path: &Path) -> (Option<Config>, Vec<String>) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return (None, vec![format!("reading {}: {e}", path.display())]),
        };
        let base = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        let mut problems = Vec::new();
        let mut text = text;
        let mut config = None;
        // Each round sets one line aside; a file has only so many.
        for _ in 0..=text.lines().count() {
            match toml::from_str::<Config>(&text) {
                Ok(c) => {
                    config = Some(c);
                    break;
                }
                Err(e) => {
                    let (problem, line) = describe_toml_error(&text, &e);
                    problems.push(problem);
                    match line {
                        // Emptied, line breaks kept: later errors keep their line numbers.
                        Some(range) => {
                            let blank = "\n".repeat(text[range.clone()].matches('\n').count());
                            text.replace_range(range, &blank);
                        }
                        None => break,
                    }
                }
            }
        }
        let Some(mut config) = config else {
            return (None, problems);
        };
        if let Err(e) = config.resolve_paths(&base) {
            problems.push(format!("{e:#}"));
            return (None, problems);
        }
        problems.extend(config.problems());
        config.leave_room_for_additions();
        (Some(config), problems)
    }

    /// Checks the values serde cannot; reports every problem at once, each with its key.
    fn validate(&self) -> Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("\n"))
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = Vec::new();
        macro_rules! problem {
            ($($arg:tt)*) => { problems.push(format!($($arg)*)) };
        }
        if let Err(e) = self.reputation.validate() {
            problem!("{e}");
        }
        let smtp = &self.smtp;
        if smtp.submission_listen.is_empty() && smtp.submissions_listen.is_empty() {
            problem!("smtp: no listener configured");
        }
        if smtp.max_line_length < 78 || smtp.max_command_length < 512 {
            problem!("smtp: max_line_length must be >= 78 and max_command_length >= 512");
        }
        if smtp.max_recipients == 0 || smtp.max_message_size == 0 {
            problem!("smtp: max_recipients and max_message_size must be positive");
        }
        if let Some(max) = self.sender.transport.max_message_size() {
            if max < 2 * ADDITIONS_RESERVE {
                problem!(
                    "sender.transport: max_message_size must be at least {}",
                    2 * ADDITIONS_RESERVE
                );
            }
        }
        if let Some(domain) = &self.default_domain {
            if domain.is_empty() || domain.contains(['@', ' ', '<', '>', ',']) {
                problem!("default_domain: {domain:?} is not a domain (e.g. \"example.com\")");
            }
        }
        if self.spool.max_attempts == 0 {
            problem!("spool: max_attempts must be at least 1");
        }
        // RFC 4865 §3: HOLDFOR takes at most 9 digits of seconds (about 31 years).
        if smtp.max_hold_secs > 999_999_999 {
            problem!("smtp: max_hold_secs must be at most 999999999 (RFC 4865)");
        }
        if self.spool.retention_days == 0 {
            problem!(
                "spool: retention_days must be at least 1 (finished records are kept that long)"
            );
        }
        match (self.spool.backend, &self.spool.aws) {
            (SpoolBackend::Aws, None) => {
                problem!("spool: backend = \"aws\" needs a [spool.aws] section (queue, dead_letter_queue, bucket, table)")
            }
            (SpoolBackend::Redb, Some(_)) => {
                problem!("spool.aws: given, but backend is \"redb\" (set backend = \"aws\")")
            }
            _ => {}
        }
        if self.spool.backend == SpoolBackend::Aws && self.spool.visibility_timeout_secs > 43_200 {
            problem!("spool: visibility_timeout_secs is at most 43200 (12 h) with SQS");
        }
        if matches!(self.sender.transport, TransportConfig::Ses(_))
            && smtp.max_recipients > crate::transport::ses::MAX_DESTINATIONS
        {
            problem!("smtp.max_recipients: SES accepts at most 50 destinations per message");
        }
        if let TransportConfig::Smtp(relay) = &self.sender.transport {
            if relay.username.is_some()
                && relay.password_file.is_none()
                && relay.password_env.is_none()
            {
                problem!("sender.transport: username needs password_file or password_env");
            }
            if relay.max_connections == 0 {
                problem!("sender.transport: max_connections must be at least 1");
            }
        }
        if let Some(sqs) = &self.feedback.sqs {
            if sqs.wait_secs > 20 {
                problem!("feedback.sqs.wait_secs: SQS long polling waits at most 20 seconds");
            }
        }
        for topic in &self.feedback.topics {
            if !topic.starts_with("arn:aws") || topic.split(':').count() != 6 {
                problem!("feedback.topics: {topic:?} is not an SNS topic ARN");
            }
        }
        if self.sender.workers == 0 {
            problem!("sender: workers must be at least 1");
        }
        if let TransportConfig::Ses(ses) = &self.sender.transport {
            for problem in crate::sender::prepare::check_static_tags(&ses.tags, &Default::default())
            {
                problem!("sender.transport.tags: {problem}");
            }
        }
        if let Some(console) = &self.console {
            problems.extend(console.problems());
        }
        if let Some(acme) = &self.tls.acme {
            problems.extend(acme.problems(self.http.listen.len()));
        }
        if self.http.max_request_size < 4096 {
            problem!("http: max_request_size must be at least 4096");
        }
        let mut logins = std::collections::HashSet::new();
        for account in &self.accounts {
            if !logins.insert(account.login.to_lowercase()) {
                problem!("account {}: login given twice", account.login);
            }
            match &account.password_hash {
                Some(hash) if hash.starts_with("$argon2") => {}
                Some(_) => problem!(
                    "account {}: password_hash is not an argon2 PHC string (use `outbox passwd`)",
                    account.login
                ),
                None => problem!(
                    "account {}: password_hash or password_hash_file is required",
                    account.login
                ),
            }
            for identity in &account.identities {
                let empty = Default::default();
                let global = match &self.sender.transport {
                    TransportConfig::Ses(ses) => &ses.tags,
                    _ => &empty,
                };
                for problem in crate::sender::prepare::check_static_tags(&identity.ses_tags, global)
                {
                    problem!(
                        "account {} identity {}: {problem}",
                        account.login,
                        identity.id
                    );
                }
                match (&identity.email, &identity.domain) {
                    (Some(email), None) if email.contains('@') => {}
                    (None, Some(domain)) if !domain.contains('@') && !domain.is_empty() => {}
                    (Some(email), None) => problem!(
                        "account {} identity {}: email {email:?} is not an address (name@domain)",
                        account.login,
                        identity.id
                    ),
                    (None, Some(domain)) => problem!(
                        "account {} identity {}: domain {domain:?} is not a domain (e.g. example.com)",
                        account.login,
                        identity.id
                    ),
                    _ => problem!(
                        "account {} identity {}: give exactly one of email (an address) or domain",
                        account.login,
                        identity.id
                    ),
                }
            }
        }
        problems
    }
}

/// A TOML or type error as an operator reads it: the line, the key, what was expected. Also
/// the byte range to set aside so reading can go on: the offending `key = value` line, or a
/// refused table with its keys; None for an error without a place.
fn describe_toml_error(
    text: &str,
    e: &toml::de::Error,
) -> (String, Option<std::ops::Range<usize>>) {
    let message = e.message();
    let Some(span) = e.span() else {
        return (message.to_string(), None);
    };
    let start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let end = text[span.start..]
        .find('\n')
        .map_or(text.len(), |i| span.start + i);
    let number = text[..start].matches('\n').count() + 1;
    let line = text[start..end].trim();
    let found = text.get(span.clone()).unwrap_or_default().trim();
    let words = if message.starts_with("invalid boolean")
        || message.starts_with("invalid string")
        || message.starts_with("invalid number")
        || message.starts_with("expected")
    {
        // A bare word after `=` makes the TOML parser guess at true/false.
        format!(
            "`{found}` is not a TOML value: write a number (e.g. 5), true or false, or text in quotes (\"{found}\")"
        )
    } else if let Some(rest) = message.strip_prefix("invalid type: ") {
        match rest.rsplit_once(", expected ") {
            Some((got, want)) => format!("expected {}, found {got}", expected_words(want)),
            None => message.to_string(),
        }
    } else if let Some(rest) = message.strip_prefix("unknown field ") {
        format!("unknown key {rest}")
    } else {
        message.to_string()
    };
    let header = line.starts_with('[');
    // A table header that is refused takes its keys with it (up to the next header).
    let range = if header {
        let rest = &text[end..];
        let next = rest
            .match_indices('\n')
            .map(|(i, _)| i + 1)
            .find(|i| rest[*i..].trim_start().starts_with('['))
            .map_or(text.len(), |i| end + i);
        Some(start..next)
    } else {
        line.contains('=').then_some(start..end)
    };
    (format!("line {number}: {line}: {words}"), range)
}

/// serde's names of the types a key takes, in words.
fn expected_words(want: &str) -> String {
    match want {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" | "bool" => "true or false".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

    /// Issue 16: check-config reports every problem in one run — a typo'd key, a bare word
    /// where a number belongs (serde's "invalid boolean" translated), a bad hash, an unknown
    /// Unix user, an identity whose email is not an address — each with its line or key.
    #[test]
    fn check_file_collects_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.toml");
        std::fs::write(
            &path,
            "state_dir = \"s\"\nhostnme = \"mx\"\n[spool]\nmax_attempts = five\nretention_days = \"x\"\n\
             [smpt]\nmax_recipients = 3\n\
             [[account]]\nlogin = \"a\"\npassword_hash = \"plain\"\nunix_users = [\"no-such-user-16\"]\n\
             [[account.identity]]\nid = \"i\"\nemail = \"not-an-address\"\n",
        )
        .unwrap();
        let (config, mut problems) = Config::check_file(&path);
        problems.extend(crate::server::check(
            &config.expect("read despite the problems"),
        ));
        let all = problems.join("\n");
        for want in [
            "line 2: hostnme = \"mx\": unknown key `hostnme`",
            "line 4: max_attempts = five: `five` is not a TOML value: write a number (e.g. 5), true or false, or text in quotes (\"five\")",
            "line 5: retention_days = \"x\": expected a whole number, found string \"x\"",
            "line 6: [smpt]: unknown key `smpt`",
            "account a: password_hash is not an argon2 PHC string",
            "account a: no Unix user no-such-user-16",
            "account a identity i: email \"not-an-address\" is not an address (name@domain)",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert!(!all.contains("invalid boolean"), "{all}");
    }

    #[test]
    fn defaults_and_relative_paths() {
        let text = format!(
            "state_dir = \"state\"\n[[account]]\nlogin = \"a\"\npassword_hash = \"{HASH}\"\n\
             [[account.identity]]\nid = \"i\"\nemail = \"a@example.com\"\n"
        );
        let config = Config::parse(&text, Path::new("/etc/outbox")).unwrap();
        assert_eq!(config.state_dir, Path::new("/etc/outbox/state"));
        assert_eq!(
            config.tls.cert,
            Path::new("/etc/outbox/../certs/dev-cert.pem")
        );
        assert_eq!(config.smtp.max_recipients, 50);
        assert_eq!(config.spool.max_attempts, 5);
        assert_eq!(
            config.accounts[0].identities[0].email.as_deref(),
            Some("a@example.com")
        );
    }

    /// Issue 14 item 3: SES takes 40 MB as sent; what we accept leaves room for our additions
    /// (RFC 1870 SIZE is what the client may send, not what we will hand on).
    #[test]
    fn accepted_size_leaves_room_under_the_ses_limit() {
        let base = format!(
            "state_dir = \"s\"\n[[account]]\nlogin = \"a\"\npassword_hash = \"{HASH}\"\n\
             [[account.identity]]\nid = \"i\"\nemail = \"a@example.com\"\n"
        );
        let dir = Config::parse(&base, Path::new("/etc/outbox")).unwrap();
        assert_eq!(dir.smtp.max_message_size, 40 * 1024 * 1024);
        let ses = format!("{base}[sender.transport]\nkind = \"ses\"\n");
        let ses = Config::parse(&ses, Path::new("/etc/outbox")).unwrap();
        assert_eq!(ses.smtp.max_message_size, 40_000_000 - ADDITIONS_RESERVE);
        let small = format!(
            "{base}[smtp]\nmax_message_size = 1000000\n[sender.transport]\nkind = \"ses\"\n"
        );
        let small = Config::parse(&small, Path::new("/etc/outbox")).unwrap();
        assert_eq!(
            small.smtp.max_message_size, 1_000_000,
            "a lower limit is kept"
        );
        let tiny = format!("{base}[sender.transport]\nkind = \"ses\"\nmax_message_size = 1000\n");
        assert!(Config::parse(&tiny, Path::new("/etc/outbox")).is_err());
    }

    /// Issue 14 item 10: static SES tags, validated against SES's rules at load.
    #[test]
    fn static_tags_are_validated() {
        let base = |transport_tags: &str, identity_tags: &str| {
            format!(
                "state_dir = \"s\"\n[sender.transport]\nkind = \"ses\"\n[sender.transport.tags]\n{transport_tags}\n\
                 [[account]]\nlogin = \"a\"\npassword_hash = \"{HASH}\"\n\
                 [[account.identity]]\nid = \"i\"\nemail = \"a@example.com\"\n[account.identity.ses_tags]\n{identity_tags}\n"
            )
        };
        let ok =
            Config::parse(&base("env = \"prod\"", "team = \"a-b_1\""), Path::new("/")).unwrap();
        assert_eq!(ok.accounts[0].identities[0].ses_tags["team"], "a-b_1");
        let many: String = (0..44).map(|i| format!("t{i} = \"v\"\n")).collect();
        for (global, identity, want) in [
            ("env = \"prod eu\"", "", "[A-Za-z0-9_-]"),
            ("", "\"n.x\" = \"v\"", "[A-Za-z0-9_-]"),
            (
                "",
                &format!("long = \"{}\"", "x".repeat(257)),
                "[A-Za-z0-9_-]",
            ),
            ("submission_id = \"x\"", "", "Outbox sets itself"),
            ("g = \"1\"", many.as_str(), "exceed SES's 50"),
        ] {
            let err = Config::parse(&base(global, identity), Path::new("/")).unwrap_err();
            assert!(
                format!("{err:#}").contains(want),
                "{global} / {identity}: {err:#}"
            );
        }
        // 7 built-in + 43 = 50: allowed.
        let fifty: String = (0..43).map(|i| format!("t{i} = \"v\"\n")).collect();
        assert!(Config::parse(&base("", &fifty), Path::new("/")).is_ok());
    }

    #[test]
    fn unknown_keys_are_errors() {
        for text in [
            "state_dir = \"s\"\nbogus = 1\n",
            "state_dir = \"s\"\n[smtp]\nmax_recipeints = 5\n",
            "state_dir = \"s\"\n[sender.transport]\nkind = \"dir\"\npath = \"x\"\nextra = 1\n",
        ] {
            let err = Config::parse(text, Path::new("/")).unwrap_err();
            assert!(format!("{err:#}").contains("unknown"), "{text}: {err:#}");
        }
    }

    #[test]
    fn rejects_bad_accounts() {
        for (text, needle) in [
            ("[[account]]\nlogin=\"a\"\npassword_hash=\"plain\"\n", "argon2"),
            ("[[account]]\nlogin=\"a\"\n", "required"),
            (
                &*format!("[[account]]\nlogin=\"a\"\npassword_hash=\"{HASH}\"\n[[account.identity]]\nid=\"x\"\n"),
                "exactly one",
            ),
            (
                &*format!("[[account]]\nlogin=\"a\"\npassword_hash=\"{HASH}\"\n[[account]]\nlogin=\"A\"\npassword_hash=\"{HASH}\"\n"),
                "twice",
            ),
        ] {
            let text = format!("state_dir = \"s\"\n{text}");
            let err = Config::parse(&text, Path::new("/")).unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{text}: {err:#}");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let text = "state_dir = \"s\"\n[smtp]\nmax_recipients = 0\nmax_hold_secs = 1000000000\n\
                    [spool]\nmax_attempts = 0\nretention_days = 0\n\
                    [[account]]\nlogin = \"a\"\npassword_hash = \"x\"\n";
        let err = format!("{:#}", Config::parse(text, Path::new("/")).unwrap_err());
        for needle in [
            "max_recipients",
            "max_hold_secs",
            "max_attempts",
            "retention_days",
            "account a: password_hash",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    /// The shipped files must stay loadable: the default and the annotated example.
    #[test]
    fn shipped_configs_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        for name in ["outbox.toml", "outbox.example.toml"] {
            Config::load(&root.join(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }
}
