//! Wire formats, sans-IO: bytes in, messages out.
//!
//! Nothing here may open a socket or a file, sleep, or spawn a task. Every
//! decoder takes a byte slice and answers "need more bytes", "here is a
//! message" or "this is not valid", so that it can be fuzzed directly.

pub mod haul;
pub mod seed;
