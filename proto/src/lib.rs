//! keel's protobuf contracts and the code generated from them. Nothing else lives here.

#![allow(clippy::all, missing_docs)]

/// The etcd v3 key-value record and event (`mvccpb`).
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// The etcd v3 client API (`etcdserverpb`) that keel's store serves.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// Member-to-member traffic of the store.
pub mod peer {
    tonic::include_proto!("keel.peer");
}

/// The gRPC object API beside the Kubernetes REST API.
pub mod objects {
    tonic::include_proto!("keel.objects.v1");
}

/// The node agent's stream to a member.
pub mod node {
    tonic::include_proto!("keel.node.v1");
}

/// The subset of the Kubernetes CRI v1 API (`runtime.v1`) the node agent calls on containerd.
pub mod cri {
    tonic::include_proto!("runtime.v1");
}
