//! Moved into the one shared harness: `support::bgp_lab`. Kept only until the tests that still
//! say `mod bgp_lab;` name `support::bgp_lab` instead.
#![allow(unused_imports)]

pub use crate::support::bgp_lab::*;
