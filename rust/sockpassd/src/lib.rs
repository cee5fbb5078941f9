//! Argument handling for the `sockpassd` and `sockpass` binaries. All logic
//! lives in the `sockpass` crate; this crate parses arguments, calls it, and
//! prints.

pub mod cli;
pub mod daemon;
