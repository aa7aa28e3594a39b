//! Feedback from Amazon SES: events (bounces, complaints, deliveries, delays, rejects) that
//! arrive over Amazon SNS — as HTTPS `POST`s to `/sns` or through an SQS queue Outbox polls —
//! or from the offline simulator, all ending in one durable spool transaction per message.
//!
//! - [`sns`]: authenticating SNS messages (pure; injected clock).
//! - [`ses`]: SES event payloads → spool feedback events (pure).
//! - [`fetch`]: HTTPS GETs to SNS (certificates, subscription confirmations).
//! - [`service`]: the shared path and the `POST /sns` handler.
//! - [`sqs`]: polling an SQS queue subscribed to the SES topic.
//! - [`simulator`]: the SES mailbox simulator, offline, for the `dir` transport.

pub mod fetch;
pub mod service;
pub mod ses;
pub mod simulator;
pub mod sns;
pub mod sqs;
