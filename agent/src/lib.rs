//! Skiff's node agent.
//!
//! # Layout
//!
//! - [`hollow`]: simulated ("hollow") nodes: many agents in one process
//!   with a fake runtime, for scale tests and benchmarks. Each registers
//!   its Node, renews its Lease and reports the pods bound to it as
//!   Running, without running anything.
//!
//! The real agent (Docker runtime, pod workers, probes) is built on the
//! same API client.

pub mod hollow;
