//! bootgate: network boot, IP address management, BMC power control and Ansible hand-off for
//! the gateway boxes of a GPU datacenter. `main.rs` only parses the command line and calls
//! [`cli::run`]; everything else lives here.

pub mod app;
pub mod audit;
pub mod bmc;
pub mod boot;
pub mod cli;
pub mod config;
pub mod control;
pub mod dhcp;
pub mod diag;
pub mod discovery;
pub mod events;
pub mod ha;
pub mod handoff;
pub mod http;
pub mod identity;
pub mod inventory;
pub mod ipam;
pub mod jail;
pub mod model;
pub mod ops;
pub mod power;
pub mod pxe;
pub mod rack;
pub mod scripts;
pub mod secrets;
pub mod snapshot;
pub mod store;
pub mod tftp;
pub mod types;
pub mod views;
