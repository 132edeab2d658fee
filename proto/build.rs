//! Generates the Rust code for keel's protobuf contracts.

const SERDE_BYTES: &str = "#[serde(with = \"serde_bytes\")]";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/etcd/kv.proto",
        "proto/etcd/rpc.proto",
        "proto/keel/peer.proto",
        "proto/keel/objects.proto",
        "proto/keel/node.proto",
        "proto/cri/api.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        // The store writes etcd requests into its Raft log as they arrived; serde lets the log
        // encode them without a second, hand-kept copy of every message.
        .type_attribute(".etcdserverpb", "#[derive(serde::Serialize, serde::Deserialize)]")
        .type_attribute(".mvccpb", "#[derive(serde::Serialize, serde::Deserialize)]")
        .bytes(".keel.peer")
        // Keys and values are the bulk of every logged request: as bytes, not as a sequence of
        // numbers, serde encodes them in one call (postcard's wire format is the same).
        .field_attribute(".mvccpb.KeyValue.key", SERDE_BYTES)
        .field_attribute(".mvccpb.KeyValue.value", SERDE_BYTES)
        .field_attribute(".etcdserverpb.PutRequest.key", SERDE_BYTES)
        .field_attribute(".etcdserverpb.PutRequest.value", SERDE_BYTES)
        .field_attribute(".etcdserverpb.RangeRequest.key", SERDE_BYTES)
        .field_attribute(".etcdserverpb.RangeRequest.range_end", SERDE_BYTES)
        .field_attribute(".etcdserverpb.DeleteRangeRequest.key", SERDE_BYTES)
        .field_attribute(".etcdserverpb.DeleteRangeRequest.range_end", SERDE_BYTES)
        .field_attribute(".etcdserverpb.Compare.key", SERDE_BYTES)
        .field_attribute(".etcdserverpb.Compare.range_end", SERDE_BYTES)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
