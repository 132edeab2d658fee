//! `keel member`: membership over the etcd v3 Cluster API (so it works against etcd too).

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use keel_proto::etcdserverpb::{self as pb, cluster_client::ClusterClient};
use tonic::transport::Channel;

#[derive(Args, Debug)]
pub struct MemberArgs {
    /// etcd API endpoints (`host:port,...`); the first that answers is used.
    #[arg(long, global = true, default_value = "127.0.0.1:2379")]
    endpoints: String,
    #[command(subcommand)]
    command: MemberCommand,
}

#[derive(Subcommand, Debug)]
enum MemberCommand {
    /// List members: id, name, peer and client addresses, learner or voter.
    List,
    /// Register a member by its peer address; start it afterwards with `keel server --join`.
    Add {
        /// Peer address (`host:port`) of the new member.
        peer: String,
        /// Add it as a learner (promote it later).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member by id (hex, as `list` prints it).
    Remove { id: String },
    /// Make a learner a voter once it has caught up.
    Promote { id: String },
}

async fn connect(endpoints: &str) -> Result<ClusterClient<Channel>> {
    let mut last = None;
    for endpoint in endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let url = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
        match tonic::transport::Endpoint::from_shared(url.clone())?
            .connect_timeout(std::time::Duration::from_secs(3))
            .connect()
            .await
        {
            Ok(channel) => return Ok(ClusterClient::new(channel)),
            Err(e) => last = Some(anyhow::anyhow!("{url}: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no endpoints given")))
}

fn parse_id(id: &str) -> Result<u64> {
    u64::from_str_radix(id.trim_start_matches("0x"), 16).with_context(|| format!("member id {id:?} is not hex"))
}

fn print_members(members: &[pb::Member]) {
    for m in members {
        println!(
            "{:x}, {}, {}, {}, {}",
            m.id,
            if m.is_learner { "learner" } else { "voter" },
            if m.name.is_empty() { "(unstarted)" } else { &m.name },
            m.peer_ur_ls.join(" "),
            m.client_ur_ls.join(" ")
        );
    }
}

pub async fn run(args: MemberArgs) -> Result<()> {
    let mut client = connect(&args.endpoints).await?;
    let status = |e: tonic::Status| anyhow::anyhow!("{}", e.message());
    match args.command {
        MemberCommand::List => {
            let r =
                client.member_list(pb::MemberListRequest { linearizable: true }).await.map_err(status)?.into_inner();
            print_members(&r.members);
        }
        MemberCommand::Add { peer, learner } => {
            if !peer.contains(':') {
                bail!("peer address {peer:?} is not host:port");
            }
            let r = client
                .member_add(pb::MemberAddRequest {
                    peer_ur_ls: vec![format!("http://{}", peer.trim_start_matches("http://"))],
                    is_learner: learner,
                })
                .await
                .map_err(status)?
                .into_inner();
            if let Some(m) = r.member {
                println!("added member {:x}", m.id);
            }
            print_members(&r.members);
        }
        MemberCommand::Remove { id } => {
            let r = client
                .member_remove(pb::MemberRemoveRequest { id: parse_id(&id)? })
                .await
                .map_err(status)?
                .into_inner();
            print_members(&r.members);
        }
        MemberCommand::Promote { id } => {
            let r = client
                .member_promote(pb::MemberPromoteRequest { id: parse_id(&id)? })
                .await
                .map_err(status)?
                .into_inner();
            print_members(&r.members);
        }
    }
    Ok(())
}
