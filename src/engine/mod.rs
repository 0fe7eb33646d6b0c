//! The engine both directions run on. Its parts:
//!
//! - `connection`: the framed connection, the only place frames are read
//!   and written, with its buffer and timeouts;
//! - `protocol::haul`: the messages, typed by who may send them (the
//!   opening by process; then [`sender`] and receiver messages by role);
//! - `storage`: the backend trait (what exists, begin or resume an upload,
//!   commit a group durably, free space, list, open for reading), with the
//!   local directory as its first implementation;
//! - [`sender`]: the sending side of a session, which `haul send` runs to
//!   push and a server runs to answer a Get;
//! - [`receiver`]: the receiving side of a session, which `haul serve`
//!   runs for a push and `haul get` runs into a local store.
//!
//! The roles are the client (`send`: `haul send`, `haul get`, `haul ls`)
//! and the server (`server`): each opens the session its way, then runs
//! one side of the engine.

pub mod receiver;
pub mod sender;
