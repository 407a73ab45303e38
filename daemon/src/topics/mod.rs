//! Topics: reference-counted upstream subscriptions and per-client routing.
//!
//! - `registry` — which clients hold which topics of an endpoint, which upstream connection
//!   carries each, their states and message counters (kept under the endpoint's lock).

pub mod registry;
