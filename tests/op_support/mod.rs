//! Moved into the one shared harness: `support::operator` (the `tortie run` process) and
//! `support::fixtures` (IPPools, Calico-written IPAM objects). Kept only until the tests that
//! still say `mod op_support;` name `support` instead.
#![allow(unused_imports)]

pub use crate::support::fixtures::{Alloc, apply_pool, mode, write_block};
pub use crate::support::operator::*;
