//! The `outbox` command.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use outbox::admin::Request;
use outbox::clock::rfc3339;
use outbox::config::Config;
use outbox::domain::{State, SubmissionRecord};

#[derive(Parser)]
#[command(
    name = "outbox",
    version,
    about = "Mail submission relay for Amazon SES"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Default: $OUTBOX_CONFIG, else /etc/outbox/outbox.toml, else ./config/outbox.toml.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Read a password from standard input and print its argon2id hash for the config.
    Passwd,
    /// Create the AWS resources of `[spool] backend = "aws"` (SQS queue and dead-letter queue,
    /// S3 bucket, DynamoDB table), or find them; safe to run again.
    AwsInit {
        /// Default: $OUTBOX_CONFIG, else /etc/outbox/outbox.toml, else ./config/outbox.toml.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Load and validate a config file, then exit.
    CheckConfig {
        /// Default: $OUTBOX_CONFIG, else /etc/outbox/outbox.toml, else ./config/outbox.toml.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Read a message on standard input and submit it, like sendmail (also when this binary is
    /// invoked as `sendmail`): -t, -f, -F, -i/-oi, recipients. Talks to the running daemon.
    Sendmail {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Inspect and repair the queue of the running daemon (like postqueue/postsuper).
    Queue {
        /// Default: $OUTBOX_CONFIG, else /etc/outbox/outbox.toml, else ./config/outbox.toml.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Addresses not sent to, per message class (transactional, mailing_list, bulk, or * for
    /// all): a complaint on bulk mail need not block a password reset.
    Suppression {
        /// Default: $OUTBOX_CONFIG, else /etc/outbox/outbox.toml, else ./config/outbox.toml.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: SuppressionCommand,
    },
    /// Bounce and complaint rates (last 24 h and 7 days) per account, identity and class, and
    /// the guard that holds a class before SES reviews the account.
    Reputation {
        /// Default: $OUTBOX_CONFIG, else /etc/outbox/outbox.toml, else ./config/outbox.toml.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: Option<ReputationCommand>,
    },
    /// The spool file of the running daemon.
    Spool {
        /// Default: $OUTBOX_CONFIG, else /etc/outbox/outbox.toml, else ./config/outbox.toml.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// The dead-letter queue: messages whose attempts ran out (kept 14 days).
    Dlq {
        /// Default: $OUTBOX_CONFIG, else /etc/outbox/outbox.toml, else ./config/outbox.toml.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Messages waiting to be sent (or in another state with --state).
    List {
        /// queued (default), held, dead, sent, delivered, bounced, complained or failed.
        #[arg(long)]
        state: Option<String>,
        /// Only this account's (login).
        #[arg(long)]
        account: Option<String>,
        /// Only messages to this recipient.
        #[arg(long)]
        recipient: Option<String>,
    },
    /// One submission: envelope, state history, last error, provider id.
    Show { id: String },
    /// Try now, ignoring the backoff: one message, or --all.
    Retry {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Take a message out of the queue for good (its submission fails).
    Delete { id: String },
    /// Keep messages from being sent until released: one, or --all queued.
    Hold {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Put held messages back into the queue: one, or --all held. A message its submitter
    /// asked to hold (FUTURERELEASE, JMAP sendAt) still waits for its release time.
    Release {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Send one queued or held message now, before the release time its submitter asked for.
    SendNow { id: String },
    /// Give the spool file's free space back to the filesystem (sending pauses meanwhile).
    Compact,
}

#[derive(Subcommand)]
enum SuppressionCommand {
    List,
    Add {
        address: String,
        /// transactional, mailing_list, bulk, or * (every class).
        #[arg(long, default_value = "*")]
        class: String,
        /// Account id the entry applies to, or * (every account).
        #[arg(long, default_value = "*")]
        account: String,
        #[arg(long)]
        reason: Option<String>,
        /// Days until the entry lapses (default: never).
        #[arg(long)]
        days: Option<u64>,
    },
    Remove {
        address: String,
        #[arg(long, default_value = "*")]
        class: String,
        #[arg(long, default_value = "*")]
        account: String,
    },
}

#[derive(Subcommand)]
enum ReputationCommand {
    /// End the guard's hold on a class (and release the queued mail it held); the guard holds
    /// it again only on new bounces or complaints.
    Release {
        /// transactional, mailing_list or bulk.
        class: String,
        /// Only this identity's hold (default: the account-wide hold).
        #[arg(long)]
        identity: Option<String>,
    },
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Write a consistent copy of the spool (redb) to FILE while the daemon runs; restore by
    /// stopping the daemon and putting the copy in place of <state_dir>/spool/spool.redb.
    Backup { file: PathBuf },
}

#[derive(Subcommand)]
enum DlqCommand {
    List,
    /// Back into the queue with a fresh attempt budget: one message, or --all.
    Redrive {
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Remove dead letters older than the retention period now.
    Purge,
}

fn main() -> ExitCode {
    let mut argv = std::env::args();
    let invoked_as = argv.next().unwrap_or_default();
    let name = Path::new(&invoked_as).file_name();
    if name.is_some_and(|n| n == "sendmail") {
        return sendmail(argv.collect());
    }
    // `mailq` (the alternatives link) lists the queue, as Postfix's does.
    let cli = if name.is_some_and(|n| n == "mailq") {
        Cli::parse_from(
            ["outbox", "queue", "list"]
                .into_iter()
                .map(String::from)
                .chain(argv),
        )
    } else {
        Cli::parse()
    };
    let result = match cli.command {
        Command::Serve { config } => find_config(config).and_then(serve),
        Command::Passwd => passwd(),
        Command::AwsInit { config } => find_config(config).and_then(|c| aws_init(&c)),
        Command::Sendmail { args } => return sendmail(args),
        Command::Queue {
            config,
            json,
            command,
        } => {
            let request = match command {
                QueueCommand::List {
                    state,
                    account,
                    recipient,
                } => match state.map(|s| parse_state(&s)).transpose() {
                    Ok(state) => Request::QueueList {
                        state,
                        account,
                        recipient,
                    },
                    Err(e) => return fail(e),
                },
                QueueCommand::Show { id } => Request::QueueShow { id },
                QueueCommand::Retry { id, all } => Request::QueueRetry { id, all },
                QueueCommand::Delete { id } => Request::QueueDelete { id },
                QueueCommand::Hold { id, all } => Request::QueueHold { id, all },
                QueueCommand::Release { id, all } => Request::QueueRelease { id, all },
                QueueCommand::SendNow { id } => Request::QueueSendNow { id },
                QueueCommand::Compact => Request::QueueCompact,
            };
            find_config(config).and_then(|c| admin(&c, &request, json))
        }
        Command::Suppression {
            config,
            json,
            command,
        } => {
            let request = match command {
                SuppressionCommand::List => Request::SuppressionList,
                SuppressionCommand::Add {
                    address,
                    class,
                    account,
                    reason,
                    days,
                } => Request::SuppressionAdd {
                    address,
                    class,
                    account,
                    reason,
                    days,
                },
                SuppressionCommand::Remove {
                    address,
                    class,
                    account,
                } => Request::SuppressionRemove {
                    address,
                    class,
                    account,
                },
            };
            find_config(config).and_then(|c| admin(&c, &request, json))
        }
        Command::Dlq {
            config,
            json,
            command,
        } => {
            let request = match command {
                DlqCommand::List => Request::DlqList,
                DlqCommand::Redrive { id, all } => Request::DlqRedrive { id, all },
                DlqCommand::Purge => Request::DlqPurge,
            };
            find_config(config).and_then(|c| admin(&c, &request, json))
        }
        Command::Reputation {
            config,
            json,
            command,
        } => {
            let request = match command {
                None => Request::Reputation,
                Some(ReputationCommand::Release { class, identity }) => {
                    Request::ReputationRelease { class, identity }
                }
            };
            find_config(config).and_then(|c| admin(&c, &request, json))
        }
        Command::Spool {
            config,
            command: SpoolCommand::Backup { file },
        } => find_config(config).and_then(|c| spool_backup(&c, &file)),
        Command::CheckConfig { config } => find_config(config).and_then(|c| check_config(&c)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sendmail`: exit codes from sysexits.h, as programs expect.
fn sendmail(args: Vec<String>) -> ExitCode {
    use outbox::sendmail::{exit, parse_args, send};
    let args = match parse_args(&args) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let mut input = Vec::new();
    if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut input) {
        eprintln!("sendmail: reading the message: {e}");
        return ExitCode::from(exit::DATAERR);
    }
    let socket = outbox::discovery::submit_socket();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let answer = runtime.block_on(send(&socket.path, args, &input));
    if let Some(warning) = &answer.warning {
        eprintln!("sendmail: {warning}");
    }
    if answer.exit == exit::UNAVAILABLE {
        eprintln!("sendmail: {}; the socket is {}", answer.message, socket.how);
    } else if answer.exit != exit::OK {
        eprintln!("sendmail: {}", answer.message);
    }
    ExitCode::from(answer.exit)
}

/// The config file: `--config`, `OUTBOX_CONFIG`, `/etc/outbox/outbox.toml`, `./config/outbox.toml`.
fn find_config(explicit: Option<PathBuf>) -> Result<PathBuf> {
    Ok(outbox::discovery::config_path(explicit.as_deref())?)
}

/// Prints every problem found, one per line, or "ok".
fn aws_init(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    let aws =
        config.spool.aws.as_ref().ok_or_else(|| {
            anyhow::anyhow!("{}: no [spool.aws] section to create", path.display())
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = runtime.block_on(outbox::spool::aws::init(
        aws,
        config.spool.visibility_timeout_secs,
    ))?;
    for line in done {
        println!("{line}");
    }
    Ok(())
}

fn check_config(path: &Path) -> Result<()> {
    // Every problem in one run: TOML and type errors line by line, then the values, then
    // what needs the system (password hashes, Unix users, keys and certificates).
    let (config, mut problems) = Config::check_file(path);
    if let Some(config) = &config {
        problems.extend(outbox::server::check(config));
    }
    let mut seen = std::collections::HashSet::new();
    problems.retain(|p| seen.insert(p.clone()));
    if problems.is_empty() {
        println!("{}: ok", path.display());
        return Ok(());
    }
    for p in &problems {
        eprintln!("{}: {p}", path.display());
    }
    anyhow::bail!("{} problem(s)", problems.len())
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("outbox: {e:#}");
    ExitCode::FAILURE
}

fn parse_state(text: &str) -> Result<State> {
    serde_json::from_value(serde_json::Value::String(text.to_lowercase()))
        .map_err(|_| anyhow::anyhow!("unknown state {text}: queued, held, dead, sent, delivered, bounced, complained or failed"))
}

/// Sends one admin request to the daemon and prints the answer.
fn admin(config: &Path, request: &Request, json: bool) -> Result<()> {
    let config = Config::load(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = runtime.block_on(outbox::admin::request(&config.admin_socket(), request))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(());
    }
    match request {
        Request::QueueShow { .. } => response.records.iter().for_each(print_record),
        Request::QueueList { .. } | Request::DlqList => print_table(&response.records),
        Request::SuppressionList => {
            println!(
                "{:<36}  {:<12}  {:<13}  {:<20}  {:<20}  REASON",
                "ADDRESS", "ACCOUNT", "CLASS", "SINCE (UTC)", "UNTIL (UTC)"
            );
            for s in &response.suppressions {
                println!(
                    "{:<36}  {:<12}  {:<13}  {:<20}  {:<20}  {}",
                    s.address,
                    s.account,
                    s.class,
                    rfc3339(s.at_ms),
                    s.expires_ms.map(rfc3339).unwrap_or_else(|| "-".into()),
                    s.reason
                );
            }
            println!("{} suppression(s)", response.suppressions.len());
        }
        Request::QueueCompact => {
            if let Some(c) = response.compacted {
                println!("spool file: {} -> {} bytes", c.before_bytes, c.after_bytes);
            }
        }
        Request::Reputation => {
            if let Some(report) = &response.reputation {
                print!("{}", outbox::reputation::text::render(report, rfc3339));
            }
        }
        Request::ReputationRelease { .. } => {
            if let Some(d) = &response.decision {
                println!("{}", outbox::reputation::text::decision(d, rfc3339));
            }
        }
        _ => println!("{} message(s) changed", response.changed),
    }
    Ok(())
}

/// `outbox spool backup FILE`: the daemon's copy, written to FILE.partial, opened with redb
/// (which checks every page's checksum) and only then renamed to FILE.
fn spool_backup(config: &Path, file: &Path) -> Result<()> {
    let config = Config::load(config)?;
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bytes = runtime.block_on(outbox::admin::backup(&config.admin_socket(), &partial))?;
    let checked = redb::Database::open(&partial)
        .map_err(anyhow::Error::from)
        .and_then(|db| outbox::redb_format::stored_format(&db).map_err(anyhow::Error::msg));
    let format = match checked {
        Ok(format) => format,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            anyhow::bail!("the copy does not open as a spool: {e:#}");
        }
    };
    std::fs::rename(&partial, file)
        .with_context(|| format!("renaming {} to {}", partial.display(), file.display()))?;
    println!(
        "{}: {bytes} bytes, spool format {}",
        file.display(),
        format.map_or_else(|| "unnumbered".into(), |f| f.to_string())
    );
    Ok(())
}

fn print_table(records: &[SubmissionRecord]) {
    println!(
        "{:<26}  {:<10}  {:>3}  {:<20}  {:<28}  {:<28}  LAST ERROR",
        "ID", "STATE", "TRY", "DUE (UTC)", "FROM", "TO"
    );
    for r in records {
        let due = r.due_ms.map(rfc3339).unwrap_or_else(|| "-".into());
        let to = match r.job.recipients.as_slice() {
            [one] => one.clone(),
            [first, rest @ ..] => format!("{first} +{}", rest.len()),
            [] => "-".into(),
        };
        println!(
            "{:<26}  {:<10}  {:>3}  {:<20}  {:<28}  {:<28}  {}",
            r.job.id.to_string(),
            format!("{:?}", r.state).to_lowercase(),
            r.receive_count,
            due,
            r.job.mail_from,
            to,
            r.last_error.as_deref().unwrap_or("")
        );
    }
    println!("{} message(s)", records.len());
}

fn print_record(r: &SubmissionRecord) {
    println!("id:          {}", r.job.id);
    println!("state:       {:?}", r.state);
    println!(
        "account:     {} (tenant {}, identity {})",
        r.job.login, r.job.tenant_id, r.job.identity_id
    );
    println!("from:        {}", r.job.mail_from);
    println!("to:          {}", r.job.recipients.join(", "));
    println!("class:       {}", r.job.message_class);
    println!("size:        {} octets", r.job.size);
    println!("created:     {}", rfc3339(r.created_ms));
    if let Some(due) = r.due_ms {
        println!("due:         {}", rfc3339(due));
    }
    println!("attempts:    {}", r.receive_count);
    if let Some(e) = &r.last_error {
        println!("last error:  {e}");
    }
    for (rcpt, status) in &r.delivery {
        println!(
            "recipient:   {rcpt}: {} at {}{}",
            status.outcome.as_str(),
            rfc3339(status.at_ms),
            status
                .detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
    }
    if let Some(p) = &r.provider_id {
        println!("provider id: {p}");
    }
    if let Some(m) = &r.message_id {
        println!("message-id:  {m} (as recipients see it)");
    }
    if let Some(link) = &r.jmap {
        println!(
            "jmap:        Email {} (identity {})",
            link.email_id, link.identity_id
        );
    }
    if r.canceled {
        println!("canceled:    by its submitter");
    }
    println!("history:");
    for t in &r.history {
        println!(
            "  {}  {:<10}  {}",
            rfc3339(t.at_ms),
            format!("{:?}", t.state).to_lowercase(),
            t.detail.as_deref().unwrap_or("")
        );
    }
}

fn passwd() -> Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "empty password on standard input");
    println!("{}", outbox::accounts::hash_password(password)?);
    Ok(())
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Large allocations (argon2's ~19 MiB per password check) must go back to the system when
/// freed. glibc raises its mmap threshold after the first such free and then serves them from
/// per-thread arenas that stay resident: measured, ten logins left ~200 MiB behind. A fixed
/// threshold keeps every large block on mmap/munmap.
fn pin_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn serve(path: PathBuf) -> Result<()> {
    pin_mmap_threshold();
    // One TLS stack for everything, including libraries that use the process default.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = Config::load(&path)?;
    init_logging(&config);
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(outbox::server::run(config, Some(path), shutdown_signal()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
