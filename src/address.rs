//! Envelope addresses as the transport can carry them.
//!
//! Amazon SES does not support SMTPUTF8: "the local part of a destination email address …
//! may only contain 7-bit ASCII", and domain names must be given as punycode (SES developer
//! guide, "Email format in Amazon SES"). So with the `ses` and `sqs` transports (the latter's
//! downstream consumer is an SES sender too) an envelope address leaves with its domain as
//! A-labels (RFC 5890 §2.3.2.1, converted by UTS #46 processing) and a non-ASCII local part is
//! refused at the door — SMTP 553 5.6.7 (RFC 6531 §3.5), JMAP `invalidRecipients` or
//! `forbiddenMailFrom` (RFC 8621 §7.5) — rather than accepted and failed later. The smarthost
//! and dir transports carry UTF-8 addresses as given (SMTPUTF8 stays advertised).

/// What envelope addresses the configured transport can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressPolicy {
    /// Any address (RFC 6531): SMTPUTF8 is advertised and addresses pass unchanged.
    #[default]
    Utf8,
    /// 7-bit ASCII only (SES): IDN domains become A-labels, non-ASCII local parts are refused.
    Ascii,
}

/// Why an address cannot be carried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// RFC 6531 §3.5, X.6.7: "Non-ASCII addresses not permitted for that sender/recipient".
    #[error("non-ASCII local part in {0}: the transport does not support SMTPUTF8")]
    NonAsciiLocalPart(String),
    /// The domain is not a valid IDN (UTS #46 processing failed).
    #[error("domain of {0} is not a valid internationalized domain name")]
    BadDomain(String),
}

impl AddressPolicy {
    /// Whether EHLO may offer SMTPUTF8 (RFC 6531 §3.1).
    pub fn smtputf8(self) -> bool {
        self == AddressPolicy::Utf8
    }

    /// The address as the transport will be given it.
    pub fn envelope(self, address: &str) -> Result<String, AddressError> {
        if self == AddressPolicy::Utf8 || address.is_ascii() {
            return Ok(address.to_string());
        }
        let Some((local, domain)) = address.rsplit_once('@') else {
            return Err(AddressError::NonAsciiLocalPart(address.to_string()));
        };
        if !local.is_ascii() {
            return Err(AddressError::NonAsciiLocalPart(address.to_string()));
        }
        let domain =
            idna::domain_to_ascii(domain).map_err(|_| AddressError::BadDomain(address.into()))?;
        Ok(format!("{local}@{domain}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_transport_table() {
        let table: &[(&str, Result<&str, ()>)] = &[
            ("a@example.com", Ok("a@example.com")),
            // ASCII stays byte for byte (no case folding of what the client wrote).
            ("A@Example.COM", Ok("A@Example.COM")),
            // IDN domain → A-labels (RFC 5890 §2.3.2.1), UTS #46 maps case.
            ("a@bücher.example", Ok("a@xn--bcher-kva.example")),
            ("a@BÜCHER.example", Ok("a@xn--bcher-kva.example")),
            ("info@例え.テスト", Ok("info@xn--r8jz45g.xn--zckzah")),
            // RFC 6531 local parts: SES cannot carry them.
            ("pelé@example.com", Err(())),
            ("用户@例子.广告", Err(())),
        ];
        for (input, want) in table {
            let got = AddressPolicy::Ascii.envelope(input);
            match want {
                Ok(w) => assert_eq!(got.as_deref(), Ok(*w), "{input}"),
                Err(()) => assert!(
                    matches!(got, Err(AddressError::NonAsciiLocalPart(_))),
                    "{input}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn utf8_transport_keeps_addresses() {
        for a in ["pelé@example.com", "a@bücher.example", "a@example.com"] {
            assert_eq!(AddressPolicy::Utf8.envelope(a).as_deref(), Ok(a));
        }
        assert!(AddressPolicy::Utf8.smtputf8());
        assert!(!AddressPolicy::Ascii.smtputf8());
    }
}
