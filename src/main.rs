//! The `palisade` command: run the proxy, run the demo, check a config.

mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use palisade::config::{Config, LogFormat};
use palisade::proxy::Proxy;
use palisade::tls::{ClientTls, ServerTls};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "A PostgreSQL proxy for replicated clusters"
)]
struct Cli {
    /// Run the proxy with this config file.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local primary + replicas from this machine's PostgreSQL binaries,
    /// with Palisade in front, and print the psql command to connect.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: SocketAddr,
        /// How many streaming replicas to start.
        #[arg(long, default_value_t = 2)]
        replicas: usize,
        /// Where the HTTP endpoint (status page, metrics, health checks)
        /// listens; by default the proxy's port + 1000.
        #[arg(long, value_name = "ADDR")]
        http: Option<SocketAddr>,
        /// How many proxies to start, on consecutive ports from --listen;
        /// more than one share the epoch through etcd (the `etcd` binary
        /// from PATH: Debian's etcd-server package).
        #[arg(long, default_value_t = 1)]
        proxies: usize,
    },
    /// Validate a config file; exits non-zero naming the bad key and the rule.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match (&cli.command, &cli.config) {
        (None, Some(file)) => Some(Config::load(file)),
        _ => None,
    };
    let format = match &loaded {
        Some(Ok(config)) => config.proxy.log_format,
        _ => LogFormat::Text,
    };
    init_tracing(format);
    match (cli.command, cli.config, loaded) {
        (Some(Command::CheckConfig { file }), _, _) => check_config(&file),
        (
            Some(Command::Demo {
                listen,
                replicas,
                http,
                proxies,
            }),
            _,
            _,
        ) => {
            let threads = palisade::config::ProxyConfig::default().worker_threads;
            let http = http.unwrap_or_else(|| demo::http_beside(listen));
            let demo = demo::Demo {
                listen,
                replicas,
                http,
                proxies,
            };
            runtime(threads, demo::run(demo))
        }
        (None, _, Some(Ok(config))) => runtime(config.proxy.worker_threads, run(config)),
        (None, Some(file), Some(Err(e))) => fail(&format!("{}: {e}", file.display())),
        _ => fail("nothing to do: pass --config FILE, or try `palisade demo` (see --help)"),
    }
}

/// `palisade check-config FILE`.
fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file)
        .map_err(|e| e.to_string())
        .and_then(check_tls)
    {
        Ok(c) => {
            println!(
                "{}: ok ({} nodes, {} users)",
                file.display(),
                c.nodes.len(),
                c.users.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("{}: {e}", file.display())),
    }
}

/// Loads the certificate, key and CA files the config names, as a start
/// would, so that `check-config` catches a file that cannot be used.
fn check_tls(config: Config) -> Result<Config, String> {
    ClientTls::load(&config.tls).map_err(|e| e.to_string())?;
    ServerTls::from_config(&config.backend).map_err(|e| e.to_string())?;
    Ok(config)
}

async fn run(config: Config) -> Result<(), String> {
    let proxy = Proxy::start(config).await.map_err(|e| e.to_string())?;
    serve_until_signal(&proxy).await;
    drain(proxy).await;
    Ok(())
}

/// Drains and stops the proxy (within `proxy.shutdown_timeout_ms`); a
/// second SIGTERM or Ctrl-C meanwhile stops it at once.
async fn drain(proxy: Proxy) {
    proxy.begin_drain();
    tokio::select! {
        () = proxy.shutdown() => {}
        () = wait_for_signal() => tracing::warn!("second signal: stopping at once"),
    }
}

fn runtime(
    threads: usize,
    work: impl std::future::Future<Output = Result<(), String>>,
) -> ExitCode {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match rt.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("palisade: {message}");
    ExitCode::FAILURE
}

/// Resolves on Ctrl-C, SIGTERM or the console's `SHUTDOWN
/// WAIT_FOR_CLIENTS`; each SIGHUP meanwhile reloads the config file and
/// the TLS certificate, as `pg_ctl reload` does PostgreSQL's.
async fn serve_until_signal(proxy: &Proxy) {
    let stop = async {
        tokio::select! {
            () = wait_for_signal() => {}
            () = proxy.drain_requested() => {}
        }
    };
    tokio::pin!(stop);
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        return stop.await;
    };
    loop {
        tokio::select! {
            () = &mut stop => return,
            Some(()) = hangup.recv() => {
                // What changed is logged; a file that cannot be used changes
                // nothing. The demo has no file: its certificate is re-read.
                if proxy.config().source.is_none() {
                    let _ = proxy.reload_tls();
                } else if let Err(e) = proxy.reload_file().await {
                    tracing::warn!(error = %e, "config not reloaded");
                }
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or journal gets
    // plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}
