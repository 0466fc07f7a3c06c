//! Pieces of `k3rs-bench`: the server process under test, an HTTPS client, the load phases and
//! latency statistics.

pub mod http;
pub mod load;
pub mod server;
pub mod stats;
