//! haul moves files from a sender to a receiving server over TCP.
//!
//! How the modules fit together, from the wire inwards:
//!
//! - [`config`] holds every default an operator or user can change, for the
//!   library and the command line alike.
//! - [`protocol`] turns bytes into messages and back. It is sans-IO: it never
//!   touches a socket or a file, so it can be tested and fuzzed on byte slices.
//!   haul's messages come in sets by who may send them (the opening Hello and
//!   the server's answer to it; then the sender's and the receiver's), and
//!   each side decodes only the set of the other.
//! - [`connection`] owns one haul connection's socket halves, buffers and
//!   deadlines, and is the only code that reads or writes a haul frame; both
//!   sides drive their sessions through it.
//! - [`server`] owns the listening socket: it accepts connections, applies
//!   limits and timeouts, and drives one task per connection.
//! - [`send`] is the client: it opens the sources and drives a connection
//!   to send them, or asks a server for a folder's listing (`haul ls`).
//! - [`transfer`] moves file bytes for both protocols: a reader thread that
//!   hashes ahead of the sender, a writer thread that hashes and writes
//!   behind the receiver, and the pump between them and the sockets.
//! - [`zero_copy`] moves bytes that nothing hashes or transforms (the
//!   classroom protocol) between file and socket inside the kernel.
//! - [`secure`] is the encrypted channel (Noise with the shared secret) that
//!   a haul session runs over when a secret is set. Which of the server's
//!   secrets a client holds decides what its session may do (send, get and
//!   list): `server::rights`.
//! - [`keepalive`] has the kernel notice a peer that vanished without a word,
//!   on the server's sockets and the client's.
//! - [`throttle`] caps the rate at which a sender writes to its socket.
//! - [`traffic`] notes when bytes last crossed each direction of a
//!   connection, so that its time limits measure silence, not how long a
//!   frame takes.
//! - [`size`] reads byte sizes and rates given on the command line.
//! - [`storage`] is the only code that creates, renames or deletes stored
//!   files, and the only place where a received name is judged. The server
//!   asks for what it needs through its `Backend` trait; the inbox
//!   directory is the one backend so far.
//! - [`text`] makes text from the other side safe to log or print.
//!
//! The `haul` binary (`main.rs`, with `report.rs` for what a send shows) is
//! a thin layer over these: it parses arguments, calls [`send`] or
//! [`server`], and turns their events and errors into output and exit codes
//! (`report/listing.rs` for what `haul ls` prints).
//!
//! Data flows socket → [`server`] → [`connection`] → [`protocol`] (header)
//! → [`storage`] (a partial file) → [`transfer`] (the bytes) → [`storage`]
//! (commit under a final name).

pub mod config;
pub mod connection;
pub mod engine;
pub mod keepalive;
pub mod protocol;
pub mod secure;
pub mod send;
pub mod server;
pub mod size;
pub mod storage;
pub mod text;
pub mod throttle;
pub mod traffic;
pub mod transfer;
pub mod zero_copy;
