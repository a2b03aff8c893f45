//! The operator's controllers.

pub mod bgp;
