//! The `outbox` command.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use outbox::config::Config;

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
        #[arg(long, default_value = "config/outbox.toml")]
        config: PathBuf,
    },
    /// Read a password from standard input and print its argon2id hash for the config.
    Passwd,
    /// Load and validate a config file, then exit.
    CheckConfig {
        #[arg(long, default_value = "config/outbox.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Passwd => passwd(),
        Command::CheckConfig { config } => {
            Config::load(&config).map(|_| println!("{}: ok", config.display()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outbox: {e:#}");
            ExitCode::FAILURE
        }
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
    runtime.block_on(outbox::server::run(config, shutdown_signal()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
