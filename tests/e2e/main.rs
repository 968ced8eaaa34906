//! Skiff's end-to-end tests, one module per area, in one test binary (one
//! link of the whole system instead of one per area: a dozen debug
//! binaries of it filled a CI machine's disk). Run one area with
//! `cargo nextest run -p skiff-e2e -E 'test(/^proxy::/)'`.

mod agent;
mod api;
mod attacks;
mod chart;
mod cli;
mod controllers;
mod crash;
mod disruption;
mod grpcurl;
mod ha;
mod ingress;
mod kubectl;
mod lifecycle;
mod metrics;
mod multihost;
mod proxy;
mod quota;
mod scheduler;
mod security;
mod securitycontext;
mod services;
mod storage;
mod store_conformance;
mod traces;
mod workloads;
