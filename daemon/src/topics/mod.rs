//! Topics: sharing one upstream subscription per topic among many clients, and routing each
//! message only to the clients that asked for its topic.
//!
//! Sans-IO, like `upstream/outbound.rs`: no tokio, no clock reads, no locks, no IO. Time comes
//! in as `now`; the driver and the endpoint perform what comes out.
//!
//! - [`registry`]: which clients hold which topics of an endpoint, which upstream connection
//!   carries each, their states and message counters (kept under the endpoint's lock).
//! - [`key`]: a message's topic, by JSON pointer, key template or regex, found by scanning
//!   the message rather than parsing it ([`key::extract`], [`key::find`]).
//! - [`template`]: subscribe and unsubscribe messages rendered from their templates, topics
//!   grouped by the fields the template shares and batched by `max_per_message`.
//! - [`subs`]: [`Subscriptions`], one per upstream connection: what is wanted, what the
//!   upstream has, what is due, at which pace, and what the upstream's answers mean.

pub mod key;
pub mod registry;
pub mod subs;
pub mod template;

pub use subs::{Outgoing, Subscriptions, TopicEvent};
