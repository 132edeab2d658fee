//! `keel`: the one binary. `keel server` runs a store member; `keel member` manages
//! membership over the etcd API; `keel bench` measures.

mod agent;
mod apply;
mod bench;
mod bench_api;
mod bench_pods;
mod bench_scheduler;
mod image;
mod kubeconfig;
mod logging;
mod member;
mod server;
mod up;

use clap::{Parser, Subcommand};

/// Requests allocate many small buffers on many threads; mimalloc handles that pattern with
/// far less contention than glibc's allocator (it showed as ~10% of a member's CPU).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "keel", version, about = "A Kubernetes-style orchestrator on a purpose-built Raft store")]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `keel_store=debug`. openraft's
    /// own info lines (internal state dumps at every vote and membership step) are left out by
    /// default; keel logs elections and membership changes itself.
    #[arg(long, global = true, env = "KEEL_LOG", default_value = "info,openraft=warn")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a control-plane member: a full store replica serving the etcd v3 and Kubernetes APIs.
    Server(Box<server::ServerArgs>),
    /// Everything on this machine in one process: a one-member store and API, the control
    /// loops and a node agent with its own containerd; writes a kubeconfig.
    Up(Box<up::UpArgs>),
    /// Run a node agent (or, with --simulate N, N simulated nodes) connected to the members.
    Agent(Box<agent::AgentArgs>),
    /// Import OCI image archives into a node's containerd.
    Image(image::ImageArgs),
    /// List, add, remove or promote store members (works against etcd too).
    Member(member::MemberArgs),
    /// Apply manifests through the gRPC object API (`--atomic`: all or nothing, one revision).
    Apply(apply::ApplyArgs),
    /// Print a kubeconfig for kubectl and client libraries.
    Kubeconfig(kubeconfig::KubeconfigArgs),
    /// Load generators that print throughput and latency percentiles.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log_level) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("error: invalid --log-level {:?}: {e}", cli.log_level);
            return std::process::ExitCode::from(2);
        }
    };
    logging::init(filter);
    let threads = match &cli.command {
        Command::Server(args) => args.runtime_threads,
        _ => 0,
    };
    let runtime = match build_runtime(threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(*args).await,
            Command::Agent(args) => agent::run(*args).await,
            Command::Up(args) => up::run(*args).await,
            Command::Image(args) => image::run(args).await,
            Command::Member(args) => member::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Kubeconfig(args) => kubeconfig::run(args),
            Command::Apply(args) => apply::run(args).await,
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

/// One thread runs everything when asked for one (no cross-thread hand-offs at all); otherwise
/// a work-stealing pool of `threads` (0: one per core).
fn build_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b
    };
    builder.enable_all().build()
}
