//! Feedback from Amazon SES: events (bounces, complaints, deliveries, delays, rejects) that
//! arrive over Amazon SNS — as HTTPS `POST`s to `/sns` or through an SQS queue Outbox polls —
//! or from the offline simulator, all ending in one durable spool transaction per message.
//!
//! - [`sns`]: authenticating SNS messages (pure; injected clock).
//! - [`ses`]: SES event payloads → spool feedback events (pure).

pub mod ses;
pub mod sns;
