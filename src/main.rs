//! The `haul` command line: parses arguments, calls the library, maps
//! outcomes to messages and exit codes. It does no transfer work itself.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use haul::config::{self, Bytes, Span};
use haul::protocol::haul::SenderId;
use haul::secure::{self, LoadedSecret, Secret, SecretError, SecretOrigin};
use haul::send::{self, SendError, SendOptions, Summary};
use haul::server::{Access, SecretRole, SeedSettle, Server, ServerConfig, StartError};
use haul::size::parse_byte_size;
use haul::storage::OnConflict;
use haul::text::shown;
use haul::throttle::RateLimit;
use report::{Output, Reporter};

mod report;

/// Exit codes, stable for scripts.
mod exit {
    pub const SOME_FILES_FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const AUTHENTICATION: u8 = 4;
    /// The server let the client in, but its secret (or, without one, the
    /// server's flags) does not allow what was asked.
    pub const NOT_ALLOWED: u8 = 5;
    /// 128 + SIGINT, as shells report a command stopped by Ctrl-C.
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Parser)]
#[command(
    name = "haul",
    version,
    about = "Send files to a haul server over TCP, fetch and list what it shares, or run one.",
    after_help = "Examples:
  haul serve                                 receive into ./received on 127.0.0.1:12000
  haul serve --listen 0.0.0.0:12000 --dir /srv/inbox
  haul send report.pdf                       send to 127.0.0.1:12000
  haul send --to 192.0.2.7:12000 photos/ notes.txt
  tar c dir | haul send - --name dir.tar     send standard input
  haul send --protocol seed report.pdf       speak the classroom protocol
  haul send --json photos/ | jq -c .         one JSON object per event, for scripts
  haul ls --from 192.0.2.7 photos            list a folder a server shares (--allow-get)
  haul get --from 192.0.2.7 photos           fetch that folder into this one
  haul completions bash                      print shell completions
  haul man --all | man -l -                  read the manual, every subcommand

Exit codes (haul send): 0 every file sent, 1 some files failed, 2 usage error,
3 no haul server reached, 4 authentication failed, 5 not allowed (the server refused
the operation for this secret or server), 130 interrupted (Ctrl-C). haul ls: the
same, 1 meaning the path is not on the server or the connection broke."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new random secret (256 bits) for HAUL_TOKEN or --token-file.
    #[command(after_help = "Example:
  haul token > ~/.haul-token && chmod 600 ~/.haul-token
  haul serve --token-file ~/.haul-token
  HAUL_TOKEN=$(cat ~/.haul-token) haul send report.pdf")]
    Token,
    /// Receive files into a directory.
    #[command(after_help = "Examples:
  haul serve
  haul serve --listen 127.0.0.1:0 --dir /tmp/inbox    port 0 picks a free port
  haul serve --token-file main.key --send-token-file drop.key   a secret that may only send

The first line on stdout is `listening on ADDR:PORT`. The log goes to stderr: one line
per transfer with its protocol, and for a failure what became of the file's data (kept
for resume, or deleted); at start, the partial transfers still held in DIR/.haul. -v (or
RUST_LOG=debug) adds sessions and files already there; -q leaves warnings only.

SIGINT (Ctrl-C) or SIGTERM stops accepting and gives transfers in flight --grace to
finish; a second one cuts them at once (haul's keep their partial data for resume).
Exit codes: 0 after a shutdown, 1 when it cannot start (a one-line reason on stderr),
2 usage error (two of the secrets the same, among others).

Rights: the server shares nothing unless told to. Each session gets its rights from the
secret it proves it holds, never from anything it sends:
  (no secret set)             send; get and list too with --allow-get
  --token-file or HAUL_TOKEN  send; get and list too with --allow-get or --get-token-file
  --send-token-file           send only
  --get-token-file            get and list only (alone: a read-only share)
With any secret set, a client without one is refused. A session refused an operation
gets a message saying so, and nothing is read or written for it.

Besides the limits above, each connection is held to fixed bounds: 1,024 offers per
batch, 64 KiB control frames and 1 MiB data frames, 65,536 directories (or 16 MiB of
their paths) remembered per session; docs/RELIABILITY.md lists every bound.")]
    Serve {
        /// Log more detail, such as when each session starts and ends (debug level).
        #[arg(short, long, conflicts_with = "quiet")]
        verbose: bool,
        /// Log only warnings and errors, not each transfer.
        #[arg(short, long)]
        quiet: bool,
        /// Address and port to listen on (port 0 picks a free port). A host
        /// name (`localhost:12000`) is looked up once, at start; its first
        /// IPv4 address is used, else its first address.
        #[arg(long, value_name = "ADDR:PORT", default_value = config::ADDRESS, value_parser = listen_address)]
        listen: SocketAddr,
        /// Directory to store received files in (created if missing).
        #[arg(long, value_name = "DIR", default_value = config::DIR)]
        dir: PathBuf,
        /// What to do when a different file exists under a received name:
        /// keep both (the new one as `name (1).ext`), replace it, or refuse
        /// the new one. Identical content sent with haul's protocol is skipped.
        #[arg(long, value_enum, default_value_t = Conflict::Rename, value_name = "POLICY")]
        on_conflict: Conflict,
        /// Same as `--on-conflict overwrite`.
        #[arg(long, conflicts_with = "on_conflict")]
        overwrite: bool,
        /// Protocols to accept: `haul,seed` (both), or `haul` alone to refuse
        /// the classroom protocol. haul's own protocol is always spoken.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "haul,seed",
            value_name = "LIST"
        )]
        protocols: Vec<Protocol>,
        /// Delete partial data of interrupted transfers after this long
        /// (e.g. `90m`, `24h`, `7d`).
        #[arg(long, default_value_t = config::PARTIAL_MAX_AGE, value_name = "AGE")]
        partial_max_age: Span,
        /// Partial data of interrupted transfers kept for resuming, in all;
        /// one sender (IP address) may keep half. Beyond it the oldest is
        /// deleted; any of it gives way when a new file needs the room.
        #[arg(long, default_value_t = config::MAX_PARTIAL, value_name = "SIZE")]
        max_partial: Bytes,
        /// Connections served at once; more wait until one ends.
        #[arg(long, default_value_t = config::MAX_CONNECTIONS, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_connections: u32,
        /// Connections one address (an IPv6 /64) may hold at once; more are
        /// closed at once. 0: no limit.
        #[arg(long, default_value_t = config::MAX_CONNECTIONS_PER_IP, value_name = "N")]
        max_connections_per_ip: u32,
        /// Time a client has, from connecting, to send its header or finish
        /// its handshake (encryption included).
        #[arg(long, default_value_t = config::HEADER_TIMEOUT, value_name = "DURATION")]
        header_timeout: Span,
        /// Time a transfer may make no progress before it is dropped.
        #[arg(long, default_value_t = config::IDLE_TIMEOUT, value_name = "DURATION")]
        idle_timeout: Span,
        /// Largest file accepted (e.g. `500M`, `4G`; K, M, G are powers of 1024).
        /// Unlimited by default.
        #[arg(long, value_name = "SIZE", value_parser = parse_byte_size)]
        max_file_size: Option<u64>,
        /// Free space to keep on the inbox's disk: a file that would eat into
        /// it is refused before any byte is written.
        #[arg(long, default_value_t = config::RESERVE, value_name = "SIZE")]
        reserve: Bytes,
        /// Read the shared secret from this file (instead of HAUL_TOKEN).
        /// With a secret, haul sessions must hold it and are encrypted.
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// Read a second secret from this file, whose holders may only send.
        #[arg(long, value_name = "PATH")]
        send_token_file: Option<PathBuf>,
        /// Read a third secret from this file, whose holders may only get
        /// and list files. The server then shares DIR with the main secret
        /// too.
        #[arg(long, value_name = "PATH")]
        get_token_file: Option<PathBuf>,
        /// Share DIR: let clients get and list its files (with a secret,
        /// the holders of the main one). Without it, and without
        /// --get-token-file, the server reveals nothing.
        #[arg(long)]
        allow_get: bool,
        /// With a secret set, still accept the classroom protocol, which
        /// cannot authenticate.
        #[arg(long)]
        allow_seed: bool,
        /// On SIGINT or SIGTERM, time given to transfers in flight before
        /// they are cut (they can resume later); a second signal cuts them
        /// at once.
        #[arg(long, default_value_t = config::GRACE, value_name = "DURATION")]
        grace: Span,
        /// How long a classroom-protocol client must pause before its file
        /// name counts as complete (the header has no length). `auto` waits
        /// 4 of the connection's round trips plus 10ms, at most 1s: enough
        /// for a header that TCP split in pieces. A fixed wait that is
        /// shorter may cut names; a longer one costs every file the wait.
        #[arg(long, default_value = "auto", value_name = "DURATION|auto")]
        seed_settle: SeedSettle,
    },
    /// Send files to a haul server, or to any server of the classroom protocol.
    #[command(after_help = "Examples:
  haul send report.pdf
  haul send --to 127.0.0.1:12000 photos/ a.txt b.txt
  haul send --name final.pdf draft-7.pdf
  tar c dir | haul send - --name dir.tar
  haul send --limit-rate 10M backup.tar      at most 10 MiB per second
  haul send --json photos/                   JSON lines on stdout, for scripts
  haul send --to localhost .                 this folder, to port 12000 of localhost
  haul send <(pg_dump db) --name db.sql      a pipe, read to its end (haul's protocol)

With haul's protocol (the default) every file is verified with BLAKE3 and acknowledged
by a receipt; an interrupted send resumes when run again. With --protocol seed each file
goes over its own connection, exactly as the classroom protocol describes: 8-byte
big-endian size, the file name, `go ahead`, the bytes.

On a terminal a progress display is drawn on stderr; elsewhere each file gets a line,
except files already there, which one line counts (-v gives each its line). The rate
counts only bytes that go on the wire; sizes are in powers of 1024 (KiB, MiB, GiB).
With --compress the closing line says what went on the wire and the ratio.
Ctrl-C stops the send and says how far it got; run the same command again to resume.

Exit codes:
  0    every file was stored (or was already there)
  1    some files failed, or the connection broke (run the command again to resume)
  2    usage error
  3    no haul server reached: nobody listening, something else answered, a
       server of another protocol version, or no answer (haul's Welcome,
       `go ahead`) within --reply-timeout
  4    authentication failed: a wrong or missing secret, or a server that
       cannot prove it holds ours
  5    not allowed: the server refused the operation for this secret (one
       that may only get and list, say) or for any client; nothing was stored
  130  interrupted (Ctrl-C)")]
    Send {
        /// Server address; without a port, 12000 (`localhost`, `[::1]`).
        #[arg(long, value_name = "HOST[:PORT]", default_value = config::ADDRESS)]
        to: String,
        /// Time the server has to answer first (haul's Welcome, the classroom
        /// protocol's `go ahead`) before the send gives up.
        #[arg(long, default_value_t = config::REPLY_TIMEOUT, value_name = "DURATION")]
        reply_timeout: Span,
        /// Wire protocol to speak: `haul` (verified, resumable, folders) or
        /// `seed` (the classroom protocol, one file per connection).
        #[arg(long, value_enum, default_value_t = Protocol::Haul)]
        protocol: Protocol,
        /// Name to store the file or folder under (default: its own name).
        /// Only with a single PATH; required for `-` (standard input).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Compress file data with zstd on the way (haul's protocol only;
        /// worth it on slow links, not on fast ones).
        #[arg(long)]
        compress: bool,
        /// Send at most RATE bytes per second, counted on the wire (e.g.
        /// `512K`, `10M`; K, M, G are powers of 1024).
        #[arg(long, value_name = "RATE")]
        limit_rate: Option<RateLimit>,
        /// Print only failures: no progress display, no closing line.
        #[arg(short, long)]
        quiet: bool,
        /// Print a line for every file, also above the progress display, and
        /// for each file already there (otherwise counted in one line).
        #[arg(short, long, conflicts_with = "quiet")]
        verbose: bool,
        /// Print one JSON object per line on stdout for each file and a
        /// closing summary, for scripts; stderr gets only failures.
        #[arg(long, conflicts_with = "quiet")]
        json: bool,
        /// Read the shared secret from this file (instead of HAUL_TOKEN).
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// Send with the classroom protocol even though a secret is set:
        /// the bytes go unencrypted and unauthenticated.
        #[arg(long)]
        cleartext: bool,
        /// Files or folders to send; `-` sends standard input.
        #[arg(value_name = "PATH", required = true)]
        paths: Vec<PathBuf>,
    },
    /// Fetch files and folders that a haul server shares.
    #[command(after_help = "Examples:
  haul get report.pdf                        from 127.0.0.1:12000 into this folder
  haul get --from 192.0.2.7 photos --into ~/pictures   a whole folder, on port 12000
  haul get --from 192.0.2.7 logs/today.log --into - | less   one file to standard output
  haul get --json photos | jq -c .           JSON lines on stdout, for scripts

Each PATH is relative to the top of what the server shares; what it names lands under
its last component in --into (`docs/a.txt` as `a.txt`, `photos` as `photos/...`), with
its time, its mode (masked by the umask) and its empty folders. Every file is verified
with BLAKE3 and gets its final name only once it is whole and synced; partial data waits
in DIR/.haul/, and running the same command again resumes it. A local file identical to
the server's is skipped; a different one is kept, and the fetched file lands as
`name (1).ext` (--on-conflict says otherwise).

Nothing the server says is trusted: a name that breaks the name rules or that was not
asked for ends the get before anything of it is written, and nothing is written through
a symbolic link in DIR. The server must share its files: run it with --allow-get (or,
with secrets, give this client's secret get rights).

With --json: the events of haul send (started, stored, already_there, failed), `path` as
the server names it and `stored_as` as it landed under DIR; the summary counts
bytes_received and names the server in `from`.

Exit codes:
  0    every file was got (or was already here)
  1    some files failed, a path is not on the server, the server broke the rules, or
       the connection broke (run the command again to resume)
  2    usage error
  3    no haul server reached
  4    authentication failed
  5    not allowed: the server does not share its files with this client")]
    Get {
        /// Server address; without a port, 12000 (`localhost`, `[::1]`).
        #[arg(long, value_name = "HOST[:PORT]", default_value = config::ADDRESS)]
        from: String,
        /// Directory to put what is got in (created if missing), or `-`
        /// for one file's bytes on standard output.
        #[arg(long, value_name = "DIR", default_value = ".")]
        into: PathBuf,
        /// What to do when a different local file is under a name: keep both
        /// (the fetched one as `name (1).ext`), replace it, or refuse the
        /// fetched one. An identical local file is skipped.
        #[arg(long, value_enum, default_value_t = Conflict::Rename, value_name = "POLICY")]
        on_conflict: Conflict,
        /// Time the server has to answer haul's Hello before get gives up.
        #[arg(long, default_value_t = config::REPLY_TIMEOUT, value_name = "DURATION")]
        reply_timeout: Span,
        /// Ask the server for zstd-compressed data (worth it on slow links).
        #[arg(long)]
        compress: bool,
        /// Print only failures.
        #[arg(short, long)]
        quiet: bool,
        /// Print a line for every file, also for each file already here.
        #[arg(short, long, conflicts_with = "quiet")]
        verbose: bool,
        /// Print one JSON object per line on stdout for each file and a
        /// closing summary, for scripts; stderr gets only failures.
        #[arg(long, conflicts_with = "quiet")]
        json: bool,
        /// Read the shared secret from this file (instead of HAUL_TOKEN).
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// Files or folders to get, relative to the top of what the server
        /// shares, `/`-separated.
        #[arg(value_name = "PATH", required = true)]
        paths: Vec<String>,
    },
    /// List a folder (or one file) that a haul server shares.
    #[command(after_help = "Examples:
  haul ls                                    the top of the server at 127.0.0.1:12000
  haul ls --from 192.0.2.7 photos/2024       one folder, on port 12000 of that host
  haul ls --json | jq -r 'select(.event == \"entry\") | .name'

One line per entry on stdout, printed as the server sends them: the kind (`d` for a
folder, `-` for a file) and permission bits, the size (powers of 1024; `-` for a
folder), the modification time in UTC (ISO 8601), the name (a folder's ends in `/`).
A count goes to stderr. The listing is not recursive: a folder's folders are entries.
Names from the server are checked (one valid file name each) before they are printed.
With --json: one object per entry, {\"event\":\"entry\",\"name\",\"kind\":\"file\"|\"dir\",
\"size\",\"mtime\" (UTC, to the nanosecond),\"mode\" (a number)}, then a summary object.

The server shows only what it shares: it must run with --allow-get (or, with secrets,
give this client's secret get rights). Its inbox's partial data (.haul/), symlinks and
special files are never listed.

Exit codes:
  0    listed
  1    the path is not on the server, or the connection broke
  2    usage error
  3    no haul server reached
  4    authentication failed
  5    not allowed: the server does not share its files with this client")]
    Ls {
        /// Server address; without a port, 12000 (`localhost`, `[::1]`).
        #[arg(long, value_name = "HOST[:PORT]", default_value = config::ADDRESS)]
        from: String,
        /// Time the server has to answer haul's Hello before ls gives up.
        #[arg(long, default_value_t = config::REPLY_TIMEOUT, value_name = "DURATION")]
        reply_timeout: Span,
        /// Print one JSON object per line on stdout for each entry and a
        /// closing summary, for scripts.
        #[arg(long)]
        json: bool,
        /// Read the shared secret from this file (instead of HAUL_TOKEN).
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
        /// Folder (or file) to list, relative to the top of what the server
        /// shares, `/`-separated; the top by default.
        #[arg(value_name = "PATH")]
        path: Option<String>,
    },
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  haul completions bash > ~/.local/share/bash-completion/completions/haul
  haul completions zsh > ~/.zfunc/_haul
  haul completions fish > ~/.config/fish/completions/haul.fish")]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the manual (roff): haul(1), a subcommand's page, or all of them.
    #[command(after_help = "Examples:
  haul man --all | man -l -                  read the whole manual
  haul man send | man -l -                   read haul-send(1) alone
  haul man --out-dir /usr/local/share/man/man1   install every page

haul(1) lists the subcommands; each has its own page, haul-send(1), haul-serve(1) and
so on, with every option.")]
    Man {
        /// The subcommand whose page to print (e.g. `send` for haul-send(1));
        /// without it, haul(1).
        #[arg(value_name = "COMMAND", conflicts_with = "all")]
        page: Option<String>,
        /// Print every page, haul(1) first, one after the other.
        #[arg(long)]
        all: bool,
        /// Write every page into DIR (haul.1, haul-send.1, ...) instead of
        /// printing.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["page", "all"])]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// haul's own protocol: verified, resumable, many files per connection.
    Haul,
    /// The classroom protocol: size, name, `go ahead`, bytes.
    Seed,
}

#[derive(Clone, Copy, ValueEnum)]
enum Conflict {
    Rename,
    Overwrite,
    Refuse,
}

/// How long a send waits for any sign of progress from the server.
const SEND_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `--listen`'s value: an address, or a host name, with a port.
fn listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err("expected ADDR:PORT or HOST:PORT, such as 127.0.0.1:12000".into());
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("{port:?} is not a port (0 to 65535)"));
    }
    let found: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|error| format!("cannot look up {host:?}: {error}"))?
        .collect();
    found
        .iter()
        .find(|address| address.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("{host:?} has no address"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "haul", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man { page, all, out_dir } => {
            return manual(page.as_deref(), all, out_dir.as_deref());
        }
        Command::Token => {
            return match haul::secure::new_token() {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("haul: cannot get random bytes from the system: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Serve { .. } | Command::Send { .. } | Command::Get { .. } | Command::Ls { .. } => {
        }
    }
    // Only serving and sending need the async runtime.
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("haul: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve {
            verbose,
            quiet,
            listen,
            dir,
            on_conflict,
            overwrite,
            protocols,
            partial_max_age,
            max_partial,
            max_connections,
            max_connections_per_ip,
            header_timeout,
            idle_timeout,
            max_file_size,
            reserve,
            token_file,
            send_token_file,
            get_token_file,
            allow_get,
            allow_seed,
            grace,
            seed_settle,
        } => {
            init_logging(match (verbose, quiet) {
                (true, _) => Some("debug"),
                (_, true) => Some("warn"),
                _ => None,
            });
            let mut config = ServerConfig::new(dir);
            config.on_conflict = match (overwrite, on_conflict) {
                (true, _) | (false, Conflict::Overwrite) => OnConflict::Overwrite,
                (false, Conflict::Rename) => OnConflict::Rename,
                (false, Conflict::Refuse) => OnConflict::Refuse,
            };
            if !protocols.contains(&Protocol::Haul) {
                eprintln!(
                    "haul: the server always speaks haul's protocol; --protocols can only add or drop seed"
                );
                return ExitCode::from(exit::USAGE);
            }
            if allow_seed && !protocols.contains(&Protocol::Seed) {
                eprintln!(
                    "haul: --allow-seed accepts the classroom protocol, which --protocols haul turns off"
                );
                return ExitCode::from(exit::USAGE);
            }
            let (Some(main), Some(send_only), Some(get_only)) = (
                server_secret(load_secret(token_file.as_deref())),
                server_secret(secure::load_secret(send_token_file.as_deref(), None)),
                server_secret(secure::load_secret(get_token_file.as_deref(), None)),
            ) else {
                return ExitCode::from(exit::USAGE);
            };
            let main_from_variable = main
                .as_ref()
                .is_some_and(|loaded| loaded.origin == SecretOrigin::Variable);
            config.access = Access {
                main: main.map(|loaded| loaded.secret),
                send_only: send_only.map(|loaded| loaded.secret),
                get_only: get_only.map(|loaded| loaded.secret),
                allow_get,
            };
            if let Some((first, second)) = config.access.same_secrets() {
                // Each named where it came from: its option, or HAUL_TOKEN.
                let named = |role: SecretRole| match role {
                    SecretRole::Main if main_from_variable => secure::TOKEN_VARIABLE.to_owned(),
                    role => role.to_string(),
                };
                eprintln!(
                    "haul: {} and {} hold the same secret; each needs its own (`haul token` makes one)",
                    named(first),
                    named(second)
                );
                return ExitCode::from(exit::USAGE);
            }
            let has_secret = config.access.has_secret();
            if allow_get && has_secret && config.access.main.is_none() {
                tracing::warn!(
                    "--allow-get shares with nobody here: with secrets set, it gives get and list to the \
                     main secret (--token-file or HAUL_TOKEN), and there is none"
                );
            }
            let wants_seed = protocols.contains(&Protocol::Seed);
            config.accept_seed = wants_seed && (!has_secret || allow_seed);
            if has_secret && wants_seed && allow_seed {
                tracing::warn!(
                    "--allow-seed: classroom-protocol clients are accepted without authentication"
                );
            } else if has_secret && wants_seed {
                tracing::info!(
                    "the classroom protocol is off because a secret is set (--allow-seed turns it on)"
                );
            }
            if !has_secret && !listen.ip().is_loopback() {
                tracing::warn!(
                    address = %listen,
                    "listening beyond this machine with no secret: anyone who can reach the port can {} \
                     the inbox, in clear; set HAUL_TOKEN or --token-file",
                    if allow_get { "read and write" } else { "write to" }
                );
            }
            config.partial_max_age = partial_max_age.0;
            config.max_partial = max_partial.0;
            config.max_connections = max_connections as usize;
            config.max_connections_per_ip =
                (max_connections_per_ip > 0).then_some(max_connections_per_ip as usize);
            config.header_timeout = header_timeout.0;
            config.idle_timeout = idle_timeout.0;
            config.max_file_size = max_file_size;
            config.reserve = reserve.0;
            config.grace = grace.0;
            config.seed_settle = seed_settle;
            let result = runtime.block_on(serve(listen, config));
            // Transfers still running after the grace period are cut here.
            runtime.shutdown_timeout(Duration::from_secs(2));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("haul: {}", shown(&format!("{error:#}")));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Send {
            to,
            reply_timeout,
            protocol,
            name,
            compress,
            limit_rate,
            quiet,
            verbose,
            json,
            token_file,
            cleartext,
            paths,
        } => {
            if compress && protocol == Protocol::Seed {
                eprintln!(
                    "haul: --compress needs haul's protocol; the seed protocol cannot compress"
                );
                return ExitCode::from(exit::USAGE);
            }
            if name.is_some() && paths.len() > 1 {
                eprintln!(
                    "haul: --name applies to a single PATH, but {} were given",
                    paths.len()
                );
                return ExitCode::from(exit::USAGE);
            }
            let reads_stdin = paths.iter().any(|path| path.as_os_str() == "-");
            if name.is_none() && reads_stdin {
                eprintln!("haul: {}", send::STDIN_NEEDS_A_NAME);
                return ExitCode::from(exit::USAGE);
            }
            if let Some(name) = name.as_deref()
                && let Err(reason) = sent_name(name, protocol)
            {
                eprintln!("haul: --name {}: {reason}", shown(&format!("{name:?}")));
                return ExitCode::from(exit::USAGE);
            }
            // The scp habit, `haul send a.txt host:12000`, names the server
            // as a source: said before anything is sent.
            if let Some(address) = paths.iter().find_map(|path| send::address_hint(path)) {
                eprintln!(
                    "haul: there is no file or folder named {address}; did you mean --to {address}?"
                );
                return ExitCode::from(exit::USAGE);
            }
            if cleartext && protocol == Protocol::Haul {
                eprintln!(
                    "haul: --cleartext applies to --protocol seed only; haul's protocol encrypts whenever a secret is set"
                );
                return ExitCode::from(exit::USAGE);
            }
            let loaded = match load_secret(token_file.as_deref()) {
                Ok(loaded) => loaded,
                Err(error) => {
                    eprintln!("haul: {}", shown(&error.to_string()));
                    return ExitCode::from(exit::USAGE);
                }
            };
            if let Some(loose) = loaded.as_ref().and_then(|loaded| loaded.loose.as_ref()) {
                eprintln!("haul: warning: {}", shown(&loose.to_string()));
            }
            // The classroom protocol cannot authenticate or encrypt: with a
            // secret set, it goes only when the user says the bytes may go
            // in the clear, and is refused before anything is sent.
            let secret = match (protocol, loaded) {
                (Protocol::Haul, loaded) => loaded.map(|loaded| loaded.secret),
                (Protocol::Seed, Some(loaded)) if !cleartext => {
                    eprintln!(
                        "haul: a secret is set ({}), but the classroom protocol cannot be encrypted or \
                         authenticated; leave out --protocol seed to send encrypted with haul's protocol, \
                         or add --cleartext to send in the clear anyway",
                        shown(&loaded.origin.to_string())
                    );
                    return ExitCode::from(exit::USAGE);
                }
                (Protocol::Seed, _) => None,
            };
            let sender = match protocol {
                Protocol::Haul => match resume_identity() {
                    Some(sender) => sender,
                    None => return ExitCode::FAILURE,
                },
                Protocol::Seed => SenderId::default(),
            };
            let to = send::with_default_port(&to);
            let options = SendOptions {
                idle: SEND_IDLE_TIMEOUT,
                reply: reply_timeout.0,
                compress,
                limit: limit_rate,
                secret,
                sender,
            };
            let output = if json {
                Output::Json
            } else if quiet {
                Output::Quiet
            } else if std::io::stderr().is_terminal() {
                Output::Progress
            } else {
                Output::Lines
            };
            let name = name.as_deref();
            let mut reporter = Reporter::new(output, verbose, &to, &paths, name);
            let finished = runtime.block_on(async {
                let sending = async {
                    match protocol {
                        Protocol::Haul => {
                            send::send_haul(&to, &paths, name, options, |event| {
                                reporter.event(event);
                            })
                            .await
                        }
                        Protocol::Seed => {
                            send::send_seed(&to, &paths, name, options, |event| {
                                reporter.event(event);
                            })
                            .await
                        }
                    }
                };
                // Ctrl-C drops the send where it is: the server keeps what
                // it received for the next run to resume from.
                tokio::select! {
                    biased;
                    _ = tokio::signal::ctrl_c() => None,
                    outcome = sending => Some(outcome),
                }
            });
            let code = match finished {
                Some(outcome) => {
                    reporter.finish(&outcome);
                    send_exit_code(&outcome)
                }
                None => {
                    let next = match protocol {
                        // The seed server keeps nothing of a file cut
                        // short, and has no way to skip what it holds.
                        Protocol::Seed => {
                            "the classroom protocol does not resume: the file cut short was not stored, and sending again sends every file again"
                        }
                        Protocol::Haul if reads_stdin => {
                            "run the same command again to resume (standard input is sent again from its start)"
                        }
                        Protocol::Haul => "run the same command again to resume",
                    };
                    reporter.interrupted(send::measure(&paths, name).files, next);
                    ExitCode::from(exit::INTERRUPTED)
                }
            };
            // A read of standard input or a pipe may still hold a thread:
            // the process ends without waiting for it.
            runtime.shutdown_background();
            code
        }
        Command::Ls {
            from,
            reply_timeout,
            json,
            token_file,
            path,
        } => {
            let path = match listed_path(path.as_deref()) {
                Ok(path) => path,
                Err(message) => {
                    eprintln!("haul: {}", shown(&message));
                    return ExitCode::from(exit::USAGE);
                }
            };
            let Ok(secret) = client_secret(token_file.as_deref()) else {
                return ExitCode::from(exit::USAGE);
            };
            let from = send::with_default_port(&from);
            let options = SendOptions {
                idle: SEND_IDLE_TIMEOUT,
                reply: reply_timeout.0,
                compress: false,
                limit: None,
                secret,
                // A listing resumes nothing, so it names no sender.
                sender: SenderId::default(),
            };
            let mut printer = report::listing::ListPrinter::new(json);
            let outcome =
                runtime.block_on(send::list_haul(&from, path.as_ref(), &options, |entries| {
                    printer.entries(entries)
                }));
            let (summary, error) = match &outcome {
                Ok(summary) => (*summary, None),
                Err(error) => (send::ListSummary::default(), Some(error.to_string())),
            };
            printer.finish(&from, &summary, error.clone());
            if let Some(error) = error {
                eprintln!("haul: {}", shown(&error));
            }
            runtime.shutdown_background();
            match outcome {
                Ok(_) => ExitCode::SUCCESS,
                Err(error) => send_exit_code(&Err(error)),
            }
        }
        Command::Get {
            from,
            into,
            on_conflict,
            reply_timeout,
            compress,
            quiet,
            verbose,
            json,
            token_file,
            paths,
        } => {
            let to_stdout = into.as_os_str() == "-";
            if to_stdout && paths.len() > 1 {
                eprintln!(
                    "haul: --into - writes one file to standard output, but {} paths were given",
                    paths.len()
                );
                return ExitCode::from(exit::USAGE);
            }
            if to_stdout && json {
                eprintln!(
                    "haul: --into - writes the file to standard output, where --json would write its events; use one of them"
                );
                return ExitCode::from(exit::USAGE);
            }
            let requested = match send::get::requested(&paths) {
                Ok(requested) => requested,
                Err(message) => {
                    eprintln!("haul: {}", shown(&message));
                    return ExitCode::from(exit::USAGE);
                }
            };
            let Ok(secret) = client_secret(token_file.as_deref()) else {
                return ExitCode::from(exit::USAGE);
            };
            // Names this receiver's partial data, so that a re-run resumes it.
            let Some(sender) = resume_identity() else {
                return ExitCode::FAILURE;
            };
            let from = send::with_default_port(&from);
            let options = SendOptions {
                idle: SEND_IDLE_TIMEOUT,
                reply: reply_timeout.0,
                compress: compress && !to_stdout,
                limit: None,
                secret,
                sender,
            };
            let on_conflict = match on_conflict {
                Conflict::Overwrite => OnConflict::Overwrite,
                Conflict::Rename => OnConflict::Rename,
                Conflict::Refuse => OnConflict::Refuse,
            };
            let output = if json {
                Output::Json
            } else if quiet || to_stdout {
                Output::Quiet
            } else if std::io::stderr().is_terminal() {
                Output::Progress
            } else {
                Output::Lines
            };
            let into = if to_stdout {
                send::get::Into::Stdout
            } else {
                send::get::Into::Dir(into)
            };
            let mut reporter = Reporter::for_get(output, verbose, &from);
            let finished = runtime.block_on(async {
                let getting =
                    send::get::get_haul(&from, &requested, &into, on_conflict, &options, |event| {
                        reporter.event(event)
                    });
                // Ctrl-C drops the get where it is: the partial data stays
                // in DIR/.haul/ for the next run to resume from.
                tokio::select! {
                    biased;
                    _ = tokio::signal::ctrl_c() => None,
                    outcome = getting => Some(outcome),
                }
            });
            let code = match finished {
                Some(outcome) => {
                    reporter.finish(&outcome);
                    send_exit_code(&outcome)
                }
                None => {
                    eprintln!("haul: interrupted; run the same command again to resume");
                    ExitCode::from(exit::INTERRUPTED)
                }
            };
            runtime.shutdown_background();
            code
        }
        Command::Completions { .. } | Command::Man { .. } | Command::Token => {
            unreachable!("handled above")
        }
    }
}

/// `haul man`: prints haul(1), the page of the subcommand `page`, or with
/// `all` every page; or writes every page into `out_dir`.
fn manual(page: Option<&str>, all: bool, out_dir: Option<&std::path::Path>) -> ExitCode {
    // Built, so that each subcommand carries its full name (`haul-send`),
    // which titles its page and matches the references in haul(1).
    let mut top = Cli::command().disable_help_subcommand(true);
    top.build();
    let subcommands: Vec<clap::Command> = top.get_subcommands().cloned().collect();
    let pages: Vec<clap::Command> = match page {
        None if all || out_dir.is_some() => std::iter::once(top).chain(subcommands).collect(),
        None => vec![top],
        Some(name) => match subcommands.into_iter().find(|sub| sub.get_name() == name) {
            Some(sub) => vec![sub],
            None => {
                eprintln!(
                    "haul: no manual page for `{}`; the subcommands are {}",
                    shown(name),
                    Cli::command()
                        .get_subcommands()
                        .map(clap::Command::get_name)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                return ExitCode::from(exit::USAGE);
            }
        },
    };
    let pages = pages.into_iter().map(|page| {
        clap_mangen::Man::new(page).source(concat!("haul ", env!("CARGO_PKG_VERSION")))
    });
    if let Some(out_dir) = out_dir {
        return match pages
            .map(|page| page.generate_to(out_dir))
            .collect::<std::io::Result<Vec<_>>>()
        {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!(
                    "haul: cannot write the manual pages into {}: {error}",
                    shown(&out_dir.display().to_string())
                );
                ExitCode::FAILURE
            }
        };
    }
    let mut stdout = std::io::stdout().lock();
    match pages
        .into_iter()
        .try_for_each(|page| page.render(&mut stdout))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("haul: cannot print the manual: {error}");
            ExitCode::FAILURE
        }
    }
}

/// This user's resume identity; if it cannot be kept, a random one for
/// this run, with a warning. `None` only when there is no randomness.
fn resume_identity() -> Option<SenderId> {
    let error = match send::identity::load_or_create() {
        Ok(sender) => return Some(sender),
        Err(error) => error,
    };
    match send::identity::random() {
        Ok(sender) => {
            eprintln!(
                "haul: warning: {error}; sending with a one-off identity, so an interrupted send will not resume"
            );
            Some(sender)
        }
        Err(random_error) => {
            eprintln!("haul: cannot get random bytes from the system: {random_error}");
            None
        }
    }
}

/// The shared secret from `--token-file`, else from HAUL_TOKEN, if any.
fn load_secret(token_file: Option<&std::path::Path>) -> Result<Option<LoadedSecret>, SecretError> {
    secure::load_secret(
        token_file,
        std::env::var_os(secure::TOKEN_VARIABLE).as_deref(),
    )
}

/// One of `haul serve`'s secrets, if set, with a warning logged when its
/// file is open to other users; `None` when it cannot be had, after saying
/// why on stderr.
fn server_secret(
    loaded: Result<Option<LoadedSecret>, SecretError>,
) -> Option<Option<LoadedSecret>> {
    match loaded {
        Ok(loaded) => {
            if let Some(loose) = loaded.as_ref().and_then(|loaded| loaded.loose.as_ref()) {
                tracing::warn!("{}", shown(&loose.to_string()));
            }
            Some(loaded)
        }
        Err(error) => {
            eprintln!("haul: {}", shown(&error.to_string()));
            None
        }
    }
}

/// Logs to stderr at `level` if given, else as RUST_LOG says, else at info.
fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(level) => tracing_subscriber::EnvFilter::new(level),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(haul::server::LogOutput)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false)
        .init();
}

async fn serve(listen: SocketAddr, config: ServerConfig) -> anyhow::Result<()> {
    let dir = config.dir.clone();
    let server = match Server::bind(listen, config).await {
        Ok(server) => server,
        // The inbox is named by the option that gave it.
        Err(error @ StartError::Dir { .. }) => anyhow::bail!("--dir {error}"),
        Err(error) => return Err(error.into()),
    };
    let bound = server.local_addr()?;
    // Watched before scripts are told the server is up, so that no signal
    // they send finds the default action (death without a word).
    let signals = std::sync::Arc::new(tokio::sync::Mutex::new(
        StopSignals::new().context("cannot watch for SIGINT and SIGTERM")?,
    ));
    {
        // Scripts wait for this line: print it first and flush it at once.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {bound}")?;
        stdout.flush()?;
    }
    tracing::info!(address = %bound, dir = %dir.display(), "serving");
    let second = std::sync::Arc::clone(&signals);
    server
        .run(
            async move { signals.lock().await.next().await },
            async move { second.lock().await.next().await },
        )
        .await;
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, watched from the start so that none is
/// missed: the first asks the server to shut down, the next to stop now.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Completes on the next SIGINT or SIGTERM.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Judges `--name` before anything is sent: with haul's protocol by the
/// store's rules, which the server applies too; the classroom protocol
/// has no rules of its own, but an empty name is no name.
fn sent_name(name: &str, protocol: Protocol) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if protocol == Protocol::Seed {
        return Ok(());
    }
    within_path_len(name, "name")?;
    haul::storage::RelPath::parse(name.as_bytes())
        .map(drop)
        .map_err(|error| error.to_string())
}

/// A path the protocol can carry: the store's rules judge the rest.
fn within_path_len(path: &str, what: &str) -> Result<(), String> {
    if path.len() > haul::protocol::haul::MAX_PATH_LEN {
        return Err(format!(
            "the {what} is {} bytes long; at most {} are allowed",
            path.len(),
            haul::protocol::haul::MAX_PATH_LEN
        ));
    }
    Ok(())
}

/// The path `haul ls` asks for, judged by the store's rules before it is
/// sent: `None` for the top (no PATH, `.`, `/`).
fn listed_path(path: Option<&str>) -> Result<Option<haul::storage::RelPath>, String> {
    let path = path.unwrap_or_default().trim_matches('/');
    if path.is_empty() || path == "." {
        return Ok(None);
    }
    within_path_len(path, "path")?;
    haul::storage::RelPath::parse(path.as_bytes())
        .map(Some)
        .map_err(|error| format!("cannot list {path}: {error}"))
}

/// The secret of `haul ls` and `haul get`, from `--token-file` or
/// `HAUL_TOKEN`, with the warning for a token file others can read; `Err`
/// once the reason it cannot be loaded is printed.
fn client_secret(token_file: Option<&std::path::Path>) -> Result<Option<Secret>, ()> {
    match load_secret(token_file) {
        Ok(loaded) => {
            if let Some(loose) = loaded.as_ref().and_then(|loaded| loaded.loose.as_ref()) {
                eprintln!("haul: warning: {}", shown(&loose.to_string()));
            }
            Ok(loaded.map(|loaded| loaded.secret))
        }
        Err(error) => {
            eprintln!("haul: {}", shown(&error.to_string()));
            Err(())
        }
    }
}

/// Maps the outcome of a send to its documented exit code.
fn send_exit_code(outcome: &Result<Summary, SendError>) -> ExitCode {
    match outcome {
        Ok(summary) if summary.failed == 0 => ExitCode::SUCCESS,
        Err(error) if error.is_connect() => ExitCode::from(exit::UNREACHABLE),
        Err(error) if error.is_auth() => ExitCode::from(exit::AUTHENTICATION),
        Err(error) if error.is_not_allowed() => ExitCode::from(exit::NOT_ALLOWED),
        _ => ExitCode::from(exit::SOME_FILES_FAILED),
    }
}
