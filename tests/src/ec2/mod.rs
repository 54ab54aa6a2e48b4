//! An EC2 world for end-to-end tests: moto (`moto_server`) behind a proxy of
//! our own that counts calls per action, injects EC2's errors, enforces EC2's
//! spot rules, serves spot prices, shows EC2's transitional states for a while,
//! and plays each instance's boot by running its user data on this host.
//! [`Ec2World`] bundles them; dropping it kills every process it started.

mod env;
mod errors;
mod faults;
mod guest;
mod handler;
mod http;
mod moto;
mod played;
mod prices;
mod processes;
mod proxy;
mod query;
mod spot;
mod states;
mod world;
mod xml;

pub use env::aws_env;
pub use errors::Ec2Error;
pub use faults::FaultRule;
pub use moto::Moto;
pub use played::PlayedMachine;
pub use processes::{alive, live_processes};
pub use proxy::FaultProxy;
pub use query::{call, Reply, API_VERSION};
pub use states::{Delays, InstanceState};
pub use world::Ec2World;

/// The EC2 actions that change an instance (or its spot request).
pub const MUTATING_ACTIONS: [&str; 5] = [
    "RunInstances",
    "StopInstances",
    "StartInstances",
    "TerminateInstances",
    "CancelSpotInstanceRequests",
];
pub use xml::texts;
