//! Where the configuration file and the local submission socket are, for every command.
//!
//! The config: `--config PATH`, else `OUTBOX_CONFIG`, else `/etc/outbox/outbox.toml` (the
//! package's), else `./config/outbox.toml` (a source checkout). A path given explicitly is used
//! as it is (a missing file is an error naming it); the two defaults are tried in order and
//! the first that exists wins. When none is found the error names every place tried.
//!
//! `sendmail` may be run by any local user, who usually cannot read the 0640 config: its socket
//! is `OUTBOX_SUBMIT_SOCKET`, else the one the config names if this user can read a config,
//! else `/run/outbox/submit.sock` (where the packaged unit's `RuntimeDirectory=` puts it).
//! Whatever was tried is kept, so an error can say so.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The packaged configuration.
pub const SYSTEM_CONFIG: &str = "/etc/outbox/outbox.toml";
/// The configuration of a source checkout, relative to the working directory.
pub const LOCAL_CONFIG: &str = "config/outbox.toml";
/// The packaged daemon's submission socket (the unit's `RuntimeDirectory=outbox`).
pub const SYSTEM_SUBMIT_SOCKET: &str = "/run/outbox/submit.sock";

/// No configuration file was found; the text names every place tried.
#[derive(Debug)]
pub struct NotFound(pub Vec<String>);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no configuration file found; tried {}",
            self.0.join(", ")
        )
    }
}

impl std::error::Error for NotFound {}

/// The config file to use: `explicit` (`--config`), else `OUTBOX_CONFIG`, else the defaults.
pub fn config_path(explicit: Option<&Path>) -> Result<PathBuf, NotFound> {
    find_config(
        explicit,
        std::env::var_os("OUTBOX_CONFIG"),
        &[Path::new(SYSTEM_CONFIG), Path::new(LOCAL_CONFIG)],
    )
}

/// [`config_path`] with its inputs given (testable without the environment or `/etc`).
pub fn find_config(
    explicit: Option<&Path>,
    env: Option<OsString>,
    defaults: &[&Path],
) -> Result<PathBuf, NotFound> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let mut tried = vec![
        "--config (not given)".into(),
        "OUTBOX_CONFIG (not set)".into(),
    ];
    for path in defaults {
        // symlink_metadata would accept a dangling link; a file we cannot stat is reported.
        match std::fs::metadata(path) {
            Ok(_) => return Ok(path.to_path_buf()),
            Err(e) => tried.push(format!("{} ({})", shown(path), reason(&e))),
        }
    }
    Err(NotFound(tried))
}

/// The submission socket for `sendmail`, and how it was found (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitSocket {
    pub path: PathBuf,
    /// "named by OUTBOX_SUBMIT_SOCKET", "named by PATH" or "the default (… why)", to follow
    /// "the socket is".
    pub how: String,
}

/// `OUTBOX_SUBMIT_SOCKET`, else the socket named by the config this user can read (see
/// [`config_path`]), else [`SYSTEM_SUBMIT_SOCKET`].
pub fn submit_socket() -> SubmitSocket {
    let env = std::env::var_os("OUTBOX_SUBMIT_SOCKET");
    let config = config_path(None);
    find_submit_socket(env, config, |path| {
        crate::config::Config::load(path)
            .map(|c| c.submit_socket())
            .map_err(|e| format!("{e:#}"))
    })
}

/// [`submit_socket`] with its inputs given.
pub fn find_submit_socket(
    env: Option<OsString>,
    config: Result<PathBuf, NotFound>,
    load: impl FnOnce(&Path) -> Result<PathBuf, String>,
) -> SubmitSocket {
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return SubmitSocket {
            path: path.into(),
            how: "named by OUTBOX_SUBMIT_SOCKET".into(),
        };
    }
    let why_default = match config {
        Ok(config) => match load(&config) {
            Ok(path) => {
                return SubmitSocket {
                    path,
                    how: format!("named by {}", config.display()),
                }
            }
            Err(e) => e,
        },
        Err(not_found) => not_found.to_string(),
    };
    SubmitSocket {
        path: SYSTEM_SUBMIT_SOCKET.into(),
        how: format!("the default (OUTBOX_SUBMIT_SOCKET not set; {why_default})"),
    }
}

fn shown(path: &Path) -> String {
    if path.is_relative() {
        format!("./{}", path.display())
    } else {
        path.display().to_string()
    }
}

fn reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_then_environment_then_defaults_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("etc.toml");
        let second = dir.path().join("local.toml");
        std::fs::write(&second, "").unwrap();
        let defaults = [first.as_path(), second.as_path()];
        let given = Path::new("/given.toml");
        assert_eq!(
            find_config(Some(given), Some("/env.toml".into()), &defaults).unwrap(),
            given
        );
        assert_eq!(
            find_config(None, Some("/env.toml".into()), &defaults).unwrap(),
            Path::new("/env.toml")
        );
        // The second default exists, the first not.
        assert_eq!(find_config(None, None, &defaults).unwrap(), second);
        std::fs::write(&first, "").unwrap();
        assert_eq!(
            find_config(None, Some("".into()), &defaults).unwrap(),
            first
        );
    }

    #[test]
    fn not_found_names_every_place_tried() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let text = find_config(None, None, &[&a, Path::new("config/none.toml")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            text,
            format!(
                "no configuration file found; tried --config (not given), OUTBOX_CONFIG (not set), \
                 {} (no such file), ./config/none.toml (no such file)",
                a.display()
            )
        );
    }

    #[test]
    fn socket_from_environment_then_config_then_system_default() {
        let from_env = find_submit_socket(Some("/s.sock".into()), Ok("/c.toml".into()), |_| {
            unreachable!("the environment wins")
        });
        assert_eq!(from_env.path, Path::new("/s.sock"));
        let named = find_submit_socket(None, Ok("/c.toml".into()), |_| Ok("/x/submit.sock".into()));
        assert_eq!(named.path, Path::new("/x/submit.sock"));
        assert_eq!(named.how, "named by /c.toml");
        let unreadable = find_submit_socket(None, Ok("/etc/outbox/outbox.toml".into()), |_| {
            Err("reading config /etc/outbox/outbox.toml: Permission denied (os error 13)".into())
        });
        assert_eq!(unreadable.path, Path::new(SYSTEM_SUBMIT_SOCKET));
        assert_eq!(
            unreadable.how,
            "the default (OUTBOX_SUBMIT_SOCKET not set; reading config \
             /etc/outbox/outbox.toml: Permission denied (os error 13))"
        );
        let none = find_submit_socket(
            None,
            Err(NotFound(vec!["x (no such file)".into()])),
            |_| unreachable!(),
        );
        assert_eq!(none.path, Path::new(SYSTEM_SUBMIT_SOCKET));
        assert_eq!(
            none.how,
            "the default (OUTBOX_SUBMIT_SOCKET not set; no configuration file found; \
             tried x (no such file))"
        );
    }
}
