//! Feedback from Amazon SES delivered over Amazon SNS: authenticating the HTTPS `POST`s that SNS
//! makes (message parsing, topic allow-list, signing-certificate URL checks that prevent SSRF,
//! freshness, and SignatureVersion 1/2 RSA signature verification against the fetched certificate)
//! before any SES event they carry is trusted. Network access (fetching the certificate, confirming
//! a subscription) is left to the caller; everything here is pure and takes an injected clock.

pub mod sns;
