//! Generates the Rust code for keel's protobuf contracts.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/etcd/kv.proto", "proto/etcd/rpc.proto", "proto/keel/peer.proto", "proto/keel/objects.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        // The store writes etcd requests into its Raft log as they arrived; serde lets the log
        // encode them without a second, hand-kept copy of every message.
        .type_attribute(".etcdserverpb", "#[derive(serde::Serialize, serde::Deserialize)]")
        .type_attribute(".mvccpb", "#[derive(serde::Serialize, serde::Deserialize)]")
        .bytes(".keel.peer")
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
