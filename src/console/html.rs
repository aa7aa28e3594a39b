//! HTML building blocks: escaping, the page frame, and forms that always carry the session's
//! CSRF token. Every value from the spool (addresses, errors, provider words) goes through
//! [`esc`]; the page has no script and no inline style, so the Content-Security-Policy can
//! forbid both.

use std::fmt::Write;

use super::auth::{Role, Session};

/// Escapes text for an HTML element or a double-quoted attribute.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page: the head (the console's own stylesheet only), the navigation, who is signed in,
/// `body`.
pub fn page(title: &str, session: Option<&Session>, body: &str) -> String {
    let mut nav = String::new();
    if let Some(session) = session {
        nav.push_str(
            "<nav><a href=\"/console\">Overview</a><a href=\"/console/queue\">Queue</a>\
             <a href=\"/console/queue?state=held\">Held</a><a href=\"/console/dlq\">Dead letters</a>\
             <a href=\"/console/suppressions\">Suppressions</a>",
        );
        let _ = write!(
            nav,
            "<span class=\"who\">{} ({})</span>{}</nav>",
            esc(&session.login),
            session.role.as_str(),
            form(session, "/console/logout", "", "Sign out", "link", "logout")
        );
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Outbox console</title>\
         <link rel=\"stylesheet\" href=\"/console/static/console.css\"></head>\
         <body><header><h1>Outbox</h1>{nav}</header><main>{body}</main></body></html>\n",
        esc(title)
    )
}

/// A one-button POST form with the session's CSRF token and `fields` (already-escaped hidden
/// inputs, see [`hidden`]).
pub fn form(
    session: &Session,
    action: &str,
    fields: &str,
    label: &str,
    class: &str,
    id: &str,
) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">{fields}\
         <button type=\"submit\" class=\"{}\" data-action=\"{}\">{}</button></form>",
        esc(action),
        esc(&session.csrf),
        esc(class),
        esc(id),
        esc(label)
    )
}

pub fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        esc(name),
        esc(value)
    )
}

/// A queue action button (`op` as the admin socket names it) for admins; nothing for viewers
/// (the server refuses their POSTs anyway).
pub fn action(session: &Session, op: &str, fields: &[(&str, &str)], back: &str) -> String {
    if session.role != Role::Admin {
        return String::new();
    }
    let mut hidden_fields = hidden("op", op) + &hidden("back", back);
    for (name, value) in fields {
        hidden_fields.push_str(&hidden(name, value));
    }
    form(
        session,
        "/console/action",
        &hidden_fields,
        &op.replace('_', " "),
        if op == "delete" { "danger" } else { "" },
        op,
    )
}

/// How long ago `ms` was, shortly ("3 min", "2 h 5 min", "4 d").
pub fn age(now_ms: u64, ms: u64) -> String {
    let secs = now_ms.saturating_sub(ms) / 1000;
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\" onclick='y'>&</a>"),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn viewers_get_no_action_buttons() {
        let mut s = Session {
            login: "v".into(),
            role: Role::Viewer,
            csrf: "tok".into(),
        };
        assert_eq!(action(&s, "hold", &[("id", "X")], "/console"), "");
        s.role = Role::Admin;
        let html = action(&s, "hold", &[("id", "X\"><script>")], "/console");
        assert!(html.contains("name=\"csrf\" value=\"tok\""), "{html}");
        assert!(html.contains("X&quot;&gt;&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
    }

    #[test]
    fn ages_read_shortly() {
        assert_eq!(age(90_000, 30_000), "1 min");
        assert_eq!(age(3_700_000, 0), "1 h 1 min");
        assert_eq!(age(0, 5), "0 s");
    }
}
