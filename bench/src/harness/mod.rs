//! What every scenario shares: the upstream, the daemon process, the clients, the relays
//! without a protocol (the floor and websocat), and the bookkeeping of what arrived.

pub mod client;
pub mod daemon;
pub mod feed;
pub mod msgpack;
pub mod payload;
pub mod relay;
pub mod stats;
pub mod track;
pub mod upstream;
