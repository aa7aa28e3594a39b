//! Attachment file types Amazon SES refuses.
//!
//! SES rejects a message carrying an attachment whose file name ends in one of these
//! extensions (SES developer guide, "Unsupported attachment types"; the API reference's
//! `Attachment.FileName` points there). With an SES-bound transport the message is refused at
//! submission — SMTP 550 5.6.0 at the end of DATA, JMAP `invalidEmail`, `sendmail` exit 65 —
//! naming the file, instead of being accepted and failed later by SES.

use mail_parser::MimeHeaders;

/// The extensions, lower case, without the dot.
const SES_UNSUPPORTED: &[&str] = &[
    "ade", "adp", "app", "asp", "bas", "bat", "cer", "chm", "cmd", "com", "cpl", "crt", "csh",
    "der", "exe", "fxp", "gadget", "hlp", "hta", "inf", "ins", "isp", "its", "js", "jse", "ksh",
    "lib", "lnk", "mad", "maf", "mag", "mam", "maq", "mar", "mas", "mat", "mau", "mav", "maw",
    "mda", "mdb", "mde", "mdt", "mdw", "mdz", "msc", "msh", "msh1", "msh2", "mshxml", "msh1xml",
    "msh2xml", "msi", "msp", "mst", "ops", "pcd", "pif", "plg", "prf", "prg", "reg", "scf", "scr",
    "sct", "shb", "shs", "sys", "ps1", "ps1xml", "ps2", "ps2xml", "psc1", "psc2", "tmp", "url",
    "vb", "vbe", "vbs", "vps", "vsmacros", "vss", "vst", "vsw", "vxd", "ws", "wsc", "wsf", "wsh",
    "xnk",
];

/// A part's file name SES would refuse, with its extension.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("attachment {name:?}: SES does not accept .{extension} files")]
pub struct RefusedAttachment {
    pub name: String,
    pub extension: String,
}

/// The first part whose file name (Content-Disposition `filename` or Content-Type `name`,
/// RFC 2231/2047 decoded) has an extension SES refuses.
pub fn refused_by_ses(mime: &[u8]) -> Option<RefusedAttachment> {
    let message = crate::message::parse_mime(mime)?;
    message.parts.iter().find_map(|part| {
        let name = part.attachment_name()?;
        let (_, extension) = name.trim_end_matches(['.', ' ']).rsplit_once('.')?;
        let extension = extension.to_ascii_lowercase();
        SES_UNSUPPORTED
            .contains(&extension.as_str())
            .then(|| RefusedAttachment {
                name: name.to_string(),
                extension,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_attachment(disposition: &str) -> Vec<u8> {
        format!(
            "From: a@example.com\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=b\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nhi\r\n\
             --b\r\n{disposition}\r\nContent-Transfer-Encoding: base64\r\n\r\nTVo=\r\n--b--\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"setup.exe\"", Some("exe")),
            ("Content-Type: application/octet-stream; name=\"RUN.BAT\"", Some("bat")),
            // RFC 2231 encoded name.
            ("Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.js", Some("js")),
            // Trailing dots and spaces do not hide it (Windows drops them).
            ("Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"a.vbs. \"", Some("vbs")),
            ("Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"report.pdf\"", None),
            ("Content-Type: application/zip\r\nContent-Disposition: attachment; filename=\"exe\"", None),
            ("Content-Type: text/plain", None),
        ];
        for (disposition, want) in cases {
            let got = refused_by_ses(&with_attachment(disposition));
            assert_eq!(
                got.as_ref().map(|r| r.extension.as_str()),
                *want,
                "{disposition}"
            );
        }
    }
}
