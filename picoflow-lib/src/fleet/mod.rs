//! The fleet: many devices, one view, over NATS JetStream (the `fleet` feature).
//!
//! Each daemon with `[fleet] url` set joins the fleet named by `[fleet] prefix` on those
//! servers. Everything goes through JetStream's own parts — key-value buckets for the
//! inventory, the desired workflows and what each node applied; a stream, de-duplicated by
//! message id, for execution records; core request/reply for runs on demand — and nothing
//! of the fleet can stop a device's own schedules: a server that is down or refuses the
//! device's credentials is retried in the background while the device works alone.
//!
//! # Rooms
//! * `settings.rs` — `[fleet]` ([`FleetConfig`]), compiled in every build (declared by the
//!   configuration module, below the rest of the fleet);
//! * `names.rs` — every subject, bucket and key, and which targets address a node;
//! * `bucket.rs` — key-value buckets through the streams they are;
//! * `records.rs` — the messages, and refusing bad ones;
//! * `link.rs` — the client's options, its tokio runtime, the link's state;
//! * `inventory.rs` — what a node reports about itself;
//! * `rollout.rs` — desired workflows on a node: choosing, checking, keeping;
//! * `agent.rs` — a daemon's side: the thread that runs all of the above;
//! * `query.rs` — reads of the nodes and the results, for the commands and the web page;
//! * `ops.rs` — the operator's side: the `picoflow fleet` commands.

pub(crate) use crate::config::fleet_settings as settings;
pub(crate) use link::read_status;
pub(crate) use rollout::add_applied;
pub use settings::{FleetConfig, Urls};

pub(crate) mod agent;
mod bucket;
mod inventory;
pub(crate) mod link;
mod names;
mod ops;
mod query;
mod records;
mod rollout;

pub use ops::*;
pub use query::{Executions, NodeView};
pub use records::{Applied, ExecutionReport, NodeRecord, RunAnswer};
