//! `keel`: the one binary. `keel server` runs a store member; `keel member` manages
//! membership over the etcd API; `keel bench` measures.

mod bench;
mod member;
mod server;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "keel", version, about = "A Kubernetes-style orchestrator on a purpose-built Raft store")]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `keel_store=debug`.
    #[arg(long, global = true, env = "KEEL_LOG", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a control-plane member: a full store replica serving the etcd v3 API.
    Server(server::ServerArgs),
    /// List, add, remove or promote store members (works against etcd too).
    Member(member::MemberArgs),
    /// Load generators that print throughput and latency percentiles.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Member(args) => member::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
