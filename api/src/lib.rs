//! keel's Kubernetes-compatible API: the resource registry (k8s-openapi types and custom
//! resources), validation, defaulting and admission, the REST handlers with watch fan-out,
//! discovery, OpenAPI and tables. It reaches the store only through [`storage::Storage`].

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admission;
pub mod apply;
pub mod canonical;
pub mod convert;
pub mod crd;
pub mod defaults;
pub mod discovery;
pub mod error;
pub mod eviction;
pub mod fanout;
pub mod grpc;
pub mod instrumentation;
pub mod jwt;
pub mod kubernetes_service;
pub mod limitrange;
pub mod metrics;
pub mod object;
pub mod openapi;
pub mod openapi_proto;
pub mod patch;
pub mod podstream;
mod portforward;
pub mod proto;
pub mod quota;
pub mod rawjson;
pub mod registry;
pub mod rest;
pub mod scale;
pub mod schema;
pub mod selector;
pub mod server;
pub mod service_alloc;
pub mod storage;
pub mod table;
pub mod tokens;
