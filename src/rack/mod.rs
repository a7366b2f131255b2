//! Racks: onboarding a rack's hosts.

pub mod onboard;
