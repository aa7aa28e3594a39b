//! Outbox: a mail submission relay (MSA) that hands mail to Amazon SES.
//!
//! Dependencies point one way: listeners → submission → spool → senders → transports; only
//! [`server`] (the composition root) sees everything.
//!
//! - [`config`]: the TOML configuration, validated at load.
//! - [`discovery`]: where the config file and the submission socket are, for every command.
//! - [`admin`]: the Unix admin socket behind `outbox queue …` / `outbox dlq …`.
//! - [`accounts`]: accounts, the identities they may send as, password checks.
//! - [`address`]: envelope addresses as the transport can carry them (SMTPUTF8, IDN).
//! - [`attachments`]: attachment file types SES refuses.
//! - [`smtp`]: the SMTP submission front door (parser-free state machine + async driver).
//! - [`sendmail`]: the `sendmail` command and the local submission socket behind it.
//! - [`submission`]: sender-ownership checks, trace header, message class, durable enqueue.
//! - [`domain`]: the delivery vocabulary: queue ids, classes, states, outcomes, suppressions.
//! - [`spool`]: the storage seams (Queue, Blobs, Ledger) and their embedded redb backend.
//! - [`state_files`]: modes of the state folder and its databases, whatever the umask.
//! - [`sender`]: workers that lease, prepare and hand messages to a [`transport`].
//! - [`activity`]: hourly sends, deliveries, bounces and complaints per identity and class.
//! - [`reputation`]: bounce and complaint rates per window, and the guard that holds a class.
//! - [`metrics`]: Prometheus metrics, `/healthz`, `/readyz`.
//! - [`http`]: the HTTPS listener (JMAP, SNS feedback, the console).
//! - [`console`]: the operator console: server-rendered pages, own admin accounts, CSRF.
//! - [`jmap`]: the JMAP bridge (RFC 8620/8621): drafts, identities, EmailSubmission, push.
//! - [`feedback`]: SES events over SNS (HTTPS or an SQS queue) → submission status, suppressions.
//! - [`message`]: byte-level header edits (strip Bcc, read a header).
//! - [`rope`]: a message as shared pieces, so the outgoing one does not copy the stored one.
//! - [`signature`]: the identity's signature, injected into text and HTML parts at send time.
//! - [`live`]: values a reload (SIGHUP) swaps while the server runs.
//! - [`tls`]: rustls configuration and development certificates.
//! - [`acme`]: certificates from an ACME CA (Let's Encrypt), renewed and swapped in live.
//! - [`redb_file`]: a redb file that is reopened after an I/O error (spool, JMAP store).
//! - [`redb_format`]: the format version kept in each redb file; migration or refusal.
//! - [`clock`]: injected wall-clock time.
//! - `fuzzing` (hidden): the fuzz targets, shared by `fuzz/` and `tests/fuzz_corpus.rs`.

pub mod accounts;
pub mod acme;
pub mod activity;
pub mod address;
pub mod admin;
pub mod attachments;
pub mod clock;
pub mod config;
pub mod console;
pub mod discovery;
pub mod domain;
pub mod feedback;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod jmap;
pub mod live;
pub mod message;
pub mod metrics;
pub mod redb_file;
pub mod redb_format;
pub mod reputation;
pub mod rope;
pub mod sender;
pub mod sendmail;
pub mod server;
pub mod signature;
pub mod smtp;
pub mod spool;
pub mod state_files;
pub mod submission;
pub mod tls;
pub mod transport;
