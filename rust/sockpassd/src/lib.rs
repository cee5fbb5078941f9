//! Argument handling for the `sockpassd` and `sockpass` binaries. All logic
//! lives in the `sockpass` crate; this crate parses arguments, calls it, and
//! prints.

// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cli;
pub mod daemon;
