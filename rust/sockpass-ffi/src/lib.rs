//! The sockpass C ABI. Thin `extern "C"` wrappers over the `sockpass` crate:
//! they translate types and errors and decide nothing.
