//! The space ledger: one account of the inbox's file system, shared by every
//! session of the server.
//!
//! The file system (`statvfs`) says what is used; the ledger adds what is
//! promised: the bytes and inodes granted to accepted files that are not
//! written yet. A grant is made, under one lock, only if the free space less
//! everything promised still leaves `--reserve`, and the free inodes less
//! those promised still leave [`Policy::reserve_inodes`], so sessions
//! running at once can never each be granted the same room. A file of known
//! size is checked whole before its answer: it must fit beside everything
//! promised and beside the rest of its own sender's unfinished files. It is
//! granted at once up to [`SHARE_DIVISOR`]'s share of the room its
//! sender's peers leave, and the rest as it arrives, so that a sender that
//! offers the whole disk and then trickles holds at most that share; a
//! stream is granted as it grows, before each write; a directory before it
//! is made. Abandoned partial data in the hidden area is capped by
//! `--max-partial`, and given up, oldest first, when a new file needs the
//! room it holds.
//!
//! This module decides and keeps count; the store does the file-system work.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{debug, info, warn};

use super::receiver::Policy;
use crate::config::MAX_HELD_PARTIALS;
use crate::engine::receiver::Refusal;
use crate::protocol::haul::{FailCode, MAX_DATA_LEN};
use crate::storage::{Backend, FreeSpace, HeldPartial, Partial, Store, Upload};

/// Bytes handed to a file's writer that may not have reached the disk yet,
/// and so stay granted until the file ends: at least what a `FileSink` may
/// hold queued (its deep queue of six chunks, one being written and one being
/// filled), each at most a data frame.
const IN_FLIGHT: u64 = 8 * MAX_DATA_LEN as u64;

/// Directories stop this many times [`Policy::reserve_inodes`] short
/// of the end, so that a flood of directory offers, which cost a sender
/// nothing to send, still leaves inodes for files.
const DIRECTORY_INODE_FACTOR: u64 = 2;

/// One sender may keep at most this share of `--max-partial` (here a half),
/// so that no one sender's abandoned data can push out everyone else's.
const PARTIAL_SHARES_PER_SENDER: u64 = 2;

/// One sender's files are granted at once at most this share (here a
/// half) of the room other senders leave: the rest of a larger file is
/// granted as it arrives, before each write, so that no one sender's
/// offers, however slowly their data follows, keep the room from others.
const SHARE_DIVISOR: u64 = 2;

/// Whose partial data, or grant, it is, for the caps per sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Sender(IpAddr);

/// The one place a connection's sender is chosen: its address as the limit
/// of connections per address counts it, so that the ports of one
/// machine's connections count as one sender.
/// What counts as one peer: an IPv4 address, or an IPv6 /64 (what one
/// site or host is usually given), an IPv4-mapped IPv6 address as IPv4.
pub(crate) fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
        v4 => v4,
    }
}

pub(crate) fn sender_of(peer: SocketAddr) -> Sender {
    Sender(peer_key(peer.ip()))
}

/// The server's account of promised room, and of who left which partial
/// data behind.
pub(crate) struct SpaceLedger {
    store: Store,
    /// Free space no grant may eat into (`--reserve`).
    reserve: u64,
    /// Free inodes no file may eat into.
    reserve_inodes: u64,
    max_file_size: Option<u64>,
    /// Held partial data kept in all (`--max-partial`).
    max_partial: u64,
    promised: Mutex<Promised>,
    /// The sender that left each piece of held partial data, by its name in
    /// the hidden area; data left by an earlier process has none. Pruned of
    /// names no longer held whenever the cap is applied.
    owners: Mutex<HashMap<String, Sender>>,
}

/// What is granted and not yet on disk, across every session.
#[derive(Default)]
struct Promised {
    bytes: u64,
    inodes: u64,
    /// What each sender with a live grant holds of `bytes`, and what its
    /// accepted files still announce beyond that; a sender leaves the map
    /// when both are zero, so it holds no more entries than live grants.
    senders: HashMap<Sender, Account>,
    /// Set when a search found no held partial data to give up, so that a
    /// flood of offers that do not fit does not list the hidden area for
    /// each; cleared whenever a session ends, since it may have left some.
    nothing_to_evict: bool,
}

/// One sender's part of what is promised.
#[derive(Clone, Copy, Default)]
struct Account {
    /// Bytes its grants hold, counted in [`Promised::bytes`].
    held: u64,
    /// Bytes its accepted files announced that are not granted yet: counted
    /// against its own next offers, not against other senders'.
    owed: u64,
}

/// Why a grant cannot be made.
enum Shortfall {
    /// Free bytes beyond the reserve and what is promised.
    Space {
        free: u64,
    },
    /// Free inodes beyond those kept and those promised.
    Inodes {
        free: u64,
        kept: u64,
    },
    Unreadable(io::Error),
}

/// Room granted to one file, stream or directory; given back when dropped,
/// by which time what was written shows in the file system's own count.
pub(crate) struct Charge {
    ledger: Arc<SpaceLedger>,
    /// Whose grant it is; a directory's is no one's.
    sender: Option<Sender>,
    /// Data bytes granted and not yet handed to the writer.
    promised: u64,
    /// Data bytes the file announced that are not granted yet.
    owed: u64,
    /// Bytes handed to the writer so far.
    written: u64,
    /// Of those, bytes known to be in the file, and so in the file
    /// system's own count.
    landed: u64,
    /// Blocks for the folders a commit may make, held whole.
    kept: u64,
    /// Inodes granted; given back whole when the charge ends.
    inodes: u64,
}

/// What a grant lacks, for [`SpaceLedger::grow`].
pub(crate) struct Growth {
    sender: Option<Sender>,
    /// Bytes needed now.
    more: u64,
    /// Bytes the file announced and was not granted yet.
    owed: u64,
}

/// A stream that would grow into the reserve.
#[derive(Debug)]
pub(crate) struct NoSpace;

impl SpaceLedger {
    pub(crate) fn new(store: Store, config: &Policy) -> Arc<SpaceLedger> {
        Arc::new(SpaceLedger {
            store,
            reserve: config.reserve,
            reserve_inodes: config.reserve_inodes,
            max_file_size: config.max_file_size,
            max_partial: config.max_partial,
            promised: Mutex::new(Promised::default()),
            owners: Mutex::new(HashMap::new()),
        })
    }

    /// Grants `sender` a file that needs `bytes` more bytes, an inode if it
    /// is `new` (not held already), and a block and an inode for each of
    /// the `folders` its commit may make; or says why not. Of the bytes,
    /// at most the sender's share is granted now: [`Charge::beyond`] asks
    /// for the rest as it comes.
    pub(crate) fn reserve_file(
        self: &Arc<Self>,
        sender: Sender,
        bytes: u64,
        folders: u64,
        new: bool,
    ) -> Result<Charge, Refusal> {
        if let Some(max) = self.max_file_size
            && bytes > max
        {
            return Err(Refusal::new(
                FailCode::TooLarge,
                format!("the file is {bytes} bytes; this server accepts at most {max}"),
            ));
        }
        let inodes = folders + u64::from(new);
        let need = Need {
            bytes,
            blocks: folders,
        };
        let mut promised = self.lock();
        let account = promised.senders.get(&sender).copied().unwrap_or_default();
        match self.grant(
            &mut promised,
            need,
            account.owed,
            inodes,
            self.reserve_inodes,
        ) {
            Ok(free) => {
                let data = Need { blocks: 0, ..need }.bytes(free.block);
                let now = data.min(self.share(&promised, &free, account));
                let mut charge = Charge::new(self, Some(sender));
                charge.apply(&mut promised, |charge| {
                    charge.promised = now;
                    charge.owed = data - now;
                    charge.kept = Need { bytes: 0, ..need }.bytes(free.block);
                    charge.inodes = inodes;
                });
                Ok(charge)
            }
            Err(Shortfall::Space { free }) => Err(Refusal::new(
                FailCode::NoSpace,
                format!(
                    "no space left on the server: the file needs {bytes} bytes and {free} are free \
                     beyond the {} kept free",
                    self.reserve
                ),
            )),
            Err(Shortfall::Inodes { free, kept }) => Err(Refusal::new(
                FailCode::NoSpace,
                format!(
                    "no inodes left on the server: the file needs {inodes} and {free} are free \
                     beyond the {kept} kept free"
                ),
            )),
            Err(Shortfall::Unreadable(error)) => Err(Refusal::new(
                FailCode::Io,
                format!("cannot check the server's free space: {error}"),
            )),
        }
    }

    /// Grants what making a directory costs, a block and an inode, for it
    /// and each of its `depth - 1` parents that may be missing.
    pub(crate) fn reserve_directory(self: &Arc<Self>, depth: u64) -> Result<Charge, Refusal> {
        let kept = self.reserve_inodes.saturating_mul(DIRECTORY_INODE_FACTOR);
        let mut promised = self.lock();
        let need = Need {
            bytes: 0,
            blocks: depth,
        };
        match self.grant(&mut promised, need, 0, depth, kept) {
            Ok(free) => {
                let mut charge = Charge::new(self, None);
                charge.apply(&mut promised, |charge| {
                    charge.kept = need.bytes(free.block);
                    charge.inodes = depth;
                });
                Ok(charge)
            }
            Err(Shortfall::Space { free }) => Err(Refusal::new(
                FailCode::NoSpace,
                format!(
                    "no space left on the server for more directories: {free} bytes are free \
                     beyond the {} kept free",
                    self.reserve
                ),
            )),
            Err(Shortfall::Inodes { free, kept }) => Err(Refusal::new(
                FailCode::NoSpace,
                format!(
                    "no inodes left on the server for more directories: {free} are free \
                     beyond the {kept} kept free for directories"
                ),
            )),
            Err(Shortfall::Unreadable(error)) => Err(Refusal::new(
                FailCode::Io,
                format!("cannot check the server's free space: {error}"),
            )),
        }
    }

    /// Grants a file or stream being written what `growth` lacks, judged
    /// beside everything promised, or fails: writing it would eat into the
    /// reserve. A file that still owes bytes is granted up to its sender's
    /// share of them at once, so that it asks again only when room is short.
    pub(crate) fn grow(self: &Arc<Self>, growth: Growth) -> Result<Charge, NoSpace> {
        let mut promised = self.lock();
        let need = Need {
            bytes: growth.more,
            blocks: 0,
        };
        let Ok(free) = self.grant(&mut promised, need, 0, 0, self.reserve_inodes) else {
            return Err(NoSpace);
        };
        let ahead = growth.sender.map_or(0, |sender| {
            let account = promised.senders.get(&sender).copied().unwrap_or_default();
            growth.owed.min(self.share(&promised, &free, account))
        });
        let mut charge = Charge::new(self, growth.sender);
        charge.apply(&mut promised, |charge| {
            charge.promised = need.bytes(free.block).max(ahead);
        });
        Ok(charge)
    }

    /// What may be granted at once to a sender holding `account`: its
    /// share of the room the other senders leave, less what it holds.
    fn share(&self, promised: &Promised, free: &FreeSpace, account: Account) -> u64 {
        let others = promised.bytes.saturating_sub(account.held);
        let room = free
            .bytes
            .saturating_sub(self.reserve)
            .saturating_sub(others);
        (room / SHARE_DIVISOR).saturating_sub(account.held)
    }

    /// Records that `partial`, left unfinished by `sender`, now holds data
    /// to be resumed, so that the cap per sender counts it.
    pub(crate) fn note_held(&self, partial: &Partial, sender: Sender) {
        if let Some(name) = partial.resume_name() {
            locked(&self.owners).insert(name.to_owned(), sender);
        }
    }

    /// Marks the end of a session, which may have left partial data behind.
    pub(crate) fn session_ended(&self) {
        self.lock().nothing_to_evict = false;
    }

    /// Holds held partial data to `--max-partial` in all and, when `sender`
    /// just left some, to its share for that sender: the oldest goes first.
    /// Logs what it deletes, and what stays held.
    pub(crate) fn cap_partials(&self, sender: Option<Sender>) {
        let mut held = match self.store.held_partials() {
            Ok(held) => held,
            Err(error) => {
                warn!(%error, "cannot list the partial data held");
                return;
            }
        };
        held.sort_by_key(|partial| partial.modified);
        let owned: Vec<(HeldPartial, Option<Sender>)> = {
            let mut owners = locked(&self.owners);
            let names: HashSet<&str> = held.iter().map(|partial| partial.name.as_str()).collect();
            owners.retain(|name, _| names.contains(name.as_str()));
            held.iter()
                .map(|partial| (partial.clone(), owners.get(&partial.name).copied()))
                .collect()
        };
        let mut kept = Vec::with_capacity(owned.len());
        if let Some(sender) = sender {
            let share = self.max_partial / PARTIAL_SHARES_PER_SENDER;
            let count_share = MAX_HELD_PARTIALS / PARTIAL_SHARES_PER_SENDER;
            let (mut theirs, mut their_count) = owned
                .iter()
                .filter(|(_, owner)| *owner == Some(sender))
                .fold((0u64, 0u64), |(bytes, count), (partial, _)| {
                    (bytes + partial.bytes, count + 1)
                });
            for (partial, owner) in owned {
                if owner == Some(sender) && (theirs > share || their_count > count_share) {
                    theirs -= partial.bytes;
                    their_count -= 1;
                    if self.delete(
                        &partial,
                        "over the share of --max-partial one sender may keep",
                    ) {
                        continue;
                    }
                }
                kept.push(partial);
            }
        } else {
            kept.extend(owned.into_iter().map(|(partial, _)| partial));
        }
        let mut total: u64 = kept.iter().map(|partial| partial.bytes).sum();
        let mut count = kept.len() as u64;
        for partial in &kept {
            if total <= self.max_partial && count <= MAX_HELD_PARTIALS {
                break;
            }
            if self.delete(partial, "over --max-partial") {
                total -= partial.bytes;
                count -= 1;
            }
        }
        let sender = sender.map_or_else(|| "-".to_owned(), |sender| sender.0.to_string());
        debug!(held_bytes = total, sender, "partial data held");
    }

    /// Deletes held partial data, logging why; whether it went.
    fn delete(&self, partial: &HeldPartial, reason: &str) -> bool {
        match self.store.remove_held(&partial.name) {
            Ok(true) => {
                locked(&self.owners).remove(&partial.name);
                info!(name = %partial.name, bytes = partial.bytes, reason, "deleted held partial data");
                true
            }
            Ok(false) => false,
            Err(error) => {
                warn!(name = %partial.name, %error, "cannot delete held partial data");
                false
            }
        }
    }

    /// Finds room for `need` and `inodes` beside what is promised and
    /// `owed` (the rest of the asking sender's files), keeping
    /// `kept_inodes` free, and gives up held partial data, oldest first,
    /// where that makes the room. Returns the free space it was judged by.
    fn grant(
        &self,
        promised: &mut Promised,
        need: Need,
        owed: u64,
        inodes: u64,
        kept_inodes: u64,
    ) -> Result<FreeSpace, Shortfall> {
        let free = self.store.free_space().map_err(Shortfall::Unreadable)?;
        let bytes = need.bytes(free.block).saturating_add(owed);
        let fits = |free: &FreeSpace| self.shortfall(promised, free, bytes, inodes, kept_inodes);
        let Some(shortfall) = fits(&free) else {
            return Ok(free);
        };
        if promised.nothing_to_evict {
            return Err(shortfall);
        }
        let mut held = match self.store.held_partials() {
            Ok(held) => held,
            Err(error) => {
                warn!(%error, "cannot list the partial data held");
                return Err(shortfall);
            }
        };
        // Deleting held data is worth it only if all of it would make the
        // room: a file that cannot fit anyway, however absurd its size,
        // must not cost other senders their resume data.
        let block = free.block.max(1);
        let all_gone = FreeSpace {
            bytes: held.iter().fold(free.bytes, |bytes, partial| {
                bytes.saturating_add(partial.bytes.div_ceil(block).saturating_mul(block))
            }),
            block: free.block,
            inodes: free
                .inodes
                .map(|inodes| inodes.saturating_add(held.len() as u64)),
        };
        if fits(&all_gone).is_some() {
            return Err(shortfall);
        }
        held.sort_by_key(|partial| partial.modified);
        let mut shortfall = shortfall;
        for partial in &held {
            if !self.delete(partial, "its room is needed for a new file") {
                continue;
            }
            let free = self.store.free_space().map_err(Shortfall::Unreadable)?;
            match self.shortfall(promised, &free, bytes, inodes, kept_inodes) {
                None => return Ok(free),
                Some(still) => shortfall = still,
            }
        }
        promised.nothing_to_evict = true;
        Err(shortfall)
    }

    /// What is missing for `bytes` and `inodes` beside everything promised,
    /// if anything.
    fn shortfall(
        &self,
        promised: &Promised,
        free: &FreeSpace,
        bytes: u64,
        inodes: u64,
        kept_inodes: u64,
    ) -> Option<Shortfall> {
        let free_bytes = free
            .bytes
            .saturating_sub(promised.bytes)
            .saturating_sub(self.reserve);
        if bytes > free_bytes {
            return Some(Shortfall::Space { free: free_bytes });
        }
        let free_inodes = free
            .inodes?
            .saturating_sub(promised.inodes)
            .saturating_sub(kept_inodes);
        (inodes > free_inodes).then_some(Shortfall::Inodes {
            free: free_inodes,
            kept: kept_inodes,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Promised> {
        locked(&self.promised)
    }
}

/// Room asked for, in the file system's blocks once its block size is known.
#[derive(Clone, Copy)]
struct Need {
    /// Data, which takes whole blocks.
    bytes: u64,
    /// Blocks besides, one per directory.
    blocks: u64,
}

impl Need {
    fn bytes(self, block: u64) -> u64 {
        self.bytes
            .div_ceil(block)
            .saturating_add(self.blocks)
            .saturating_mul(block)
    }
}

impl Charge {
    fn new(ledger: &Arc<SpaceLedger>, sender: Option<Sender>) -> Charge {
        Charge {
            ledger: Arc::clone(ledger),
            sender,
            promised: 0,
            owed: 0,
            written: 0,
            landed: 0,
            kept: 0,
            inodes: 0,
        }
    }

    /// What this charge holds of the ledger's promised bytes: what is still
    /// to be written, what was written but may not be on disk yet (not
    /// known to have landed, and at most what the writer may hold queued),
    /// and the folders' blocks.
    fn held(&self) -> u64 {
        let queued = (self.written - self.landed).min(IN_FLIGHT);
        self.promised
            .saturating_add(queued)
            .saturating_add(self.kept)
    }

    /// Makes `change` to this charge and the same change to the ledger's
    /// counts, under its lock, so that they always agree.
    fn apply(&mut self, promised: &mut Promised, change: impl FnOnce(&mut Charge)) {
        let (held, owed, inodes) = (self.held(), self.owed, self.inodes);
        change(self);
        promised.bytes = promised
            .bytes
            .saturating_sub(held)
            .saturating_add(self.held());
        promised.inodes = promised
            .inodes
            .saturating_sub(inodes)
            .saturating_add(self.inodes);
        if let Some(sender) = self.sender {
            let account = promised.senders.entry(sender).or_default();
            account.held = account
                .held
                .saturating_sub(held)
                .saturating_add(self.held());
            account.owed = account.owed.saturating_sub(owed).saturating_add(self.owed);
            if account.held == 0 && account.owed == 0 {
                promised.senders.remove(&sender);
            }
        }
    }

    /// What this grant lacks for writing `len` more bytes, if anything: a
    /// stream's size is not known, and a large file is granted only its
    /// sender's share at first, so their grants grow as they are written.
    pub(crate) fn beyond(&self, len: u64) -> Option<Growth> {
        (len > self.promised).then(|| Growth {
            sender: self.sender,
            more: len - self.promised,
            owed: self.owed,
        })
    }

    /// Records that `landed` of the bytes handed to the writer are in the
    /// file, so that they are no longer counted as queued.
    pub(crate) fn landed(&mut self, landed: u64) {
        let ledger = Arc::clone(&self.ledger);
        let mut promised = ledger.lock();
        self.apply(&mut promised, |charge| {
            charge.landed = landed.clamp(charge.landed, charge.written);
        });
    }

    /// Records that every byte handed to the writer is in the file.
    pub(crate) fn settled(&mut self) {
        self.landed(self.written);
    }

    /// Adds a grant from [`SpaceLedger::grow`] to this one, which then owes
    /// that much less.
    pub(crate) fn absorb(&mut self, mut more: Charge) {
        let ledger = Arc::clone(&self.ledger);
        let mut promised = ledger.lock();
        let granted = more.promised;
        more.apply(&mut promised, |more| more.promised = 0);
        self.apply(&mut promised, |charge| {
            charge.promised = charge.promised.saturating_add(granted);
            charge.owed = charge.owed.saturating_sub(granted);
        });
    }

    /// Makes room for `len` more bytes, asking the ledger for what this
    /// grant lacks, or fails: they would eat into the reserve. Does
    /// file-system work (`statvfs`), so it runs off the async threads.
    pub(crate) fn cover(&mut self, len: u64) -> Result<(), NoSpace> {
        if let Some(growth) = self.beyond(len) {
            let granted = self.ledger.grow(growth)?;
            self.absorb(granted);
        }
        Ok(())
    }

    /// Accounts for `len` granted bytes handed to the writer.
    pub(crate) fn spend(&mut self, len: u64) {
        let ledger = Arc::clone(&self.ledger);
        let mut promised = ledger.lock();
        self.apply(&mut promised, |charge| {
            charge.promised = charge.promised.saturating_sub(len);
            charge.written = charge.written.saturating_add(len);
        });
    }
}

/// A seed file's bytes go from the socket to the file inside the kernel;
/// its grant grows before each step of them, as a haul file's does before
/// each frame.
impl crate::zero_copy::Room for Charge {
    fn make(&mut self, len: u64) -> io::Result<()> {
        self.cover(len).map_err(|NoSpace| {
            io::Error::new(io::ErrorKind::StorageFull, "no space left on the server")
        })
    }

    fn used(&mut self, len: u64) {
        // Spliced into the file before the step returns.
        self.spend(len);
        self.settled();
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let ledger = Arc::clone(&self.ledger);
        let mut promised = ledger.lock();
        self.apply(&mut promised, |charge| {
            (charge.promised, charge.owed) = (0, 0);
            (charge.written, charge.landed) = (0, 0);
            (charge.kept, charge.inodes) = (0, 0);
        });
    }
}

/// Locks `mutex`; the counts it guards stay whole even if a thread
/// panicked while holding it, so the poison is ignored.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ServerConfig;
    use crate::storage::OnConflict;

    const MIB: u64 = 1024 * 1024;
    const ONE: Sender = Sender(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)));
    const TWO: Sender = Sender(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)));

    fn ledger() -> (tempfile::TempDir, Arc<SpaceLedger>) {
        let inbox = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            reserve: 0,
            ..ServerConfig::new(inbox.path().to_path_buf())
        };
        let store = Store::open(inbox.path(), OnConflict::Rename).unwrap();
        (inbox, SpaceLedger::new(store, &config.policy()))
    }

    fn promised(ledger: &SpaceLedger) -> (u64, u64) {
        let promised = ledger.lock();
        (promised.bytes, promised.inodes)
    }

    #[test]
    fn held_partials_are_capped_in_number_however_small_the_oldest_going_first() {
        let (inbox, ledger) = ledger();
        let hidden = inbox.path().join(".haul");
        std::fs::create_dir_all(&hidden).unwrap();
        let over = MAX_HELD_PARTIALS + 10;
        for index in 0..over {
            let file = hidden.join(format!("resume-{index:05}"));
            std::fs::write(&file, b"x").unwrap();
            // Oldest first by name: modification times a second apart.
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + index);
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(time)
                .unwrap();
        }
        ledger.cap_partials(None);
        let mut left: Vec<String> = std::fs::read_dir(&hidden)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left.len() as u64, MAX_HELD_PARTIALS);
        assert_eq!(left[0], "resume-00010", "the ten oldest went");
    }

    #[test]
    fn grants_made_at_once_never_share_the_same_room() {
        let (_inbox, ledger) = ledger();
        let three_quarters = ledger.store.free_space().unwrap().bytes / 4 * 3;
        let first = ledger.reserve_file(ONE, three_quarters, 0, true).unwrap();
        let refused = ledger
            .reserve_file(TWO, three_quarters, 0, true)
            .err()
            .unwrap();
        assert_eq!(refused.code, FailCode::NoSpace);
        let own = ledger
            .reserve_file(ONE, three_quarters, 0, true)
            .err()
            .unwrap();
        assert_eq!(own.code, FailCode::NoSpace);
        assert!(
            refused.text.starts_with(&format!(
                "no space left on the server: the file needs {three_quarters} bytes"
            )),
            "{refused}"
        );
        drop(first);
        assert_eq!(promised(&ledger), (0, 0));
        let second = ledger.reserve_file(ONE, three_quarters, 0, true).unwrap();
        drop(second);
        assert_eq!(promised(&ledger), (0, 0));
    }

    #[test]
    fn a_sender_is_granted_at_once_at_most_half_the_room_and_the_rest_as_it_writes() {
        let (_inbox, ledger) = ledger();
        let free = ledger.store.free_space().unwrap().bytes;
        let big = free / 4 * 3;
        let mut first = ledger.reserve_file(ONE, big, 0, true).unwrap();
        let (held, _) = promised(&ledger);
        assert!(
            held < big && held > big / 2,
            "{held} of {big} granted at once"
        );
        // What is not granted yet counts against its own sender's next
        // offer, not against another sender's.
        let own = ledger.reserve_file(ONE, free / 2, 0, true).err().unwrap();
        assert_eq!(own.code, FailCode::NoSpace, "{own}");
        let other = ledger.reserve_file(TWO, free / 5, 0, true).unwrap();
        first.spend(held);
        assert_eq!(first.beyond(MIB).map(|growth| growth.more), Some(MIB));
        first.cover(MIB).unwrap();
        assert!(first.beyond(MIB).is_none(), "granted as it is written");
        drop((first, other));
        assert_eq!(promised(&ledger), (0, 0));
        assert!(
            ledger.lock().senders.is_empty(),
            "no account outlives its grants"
        );
    }

    #[test]
    fn a_grant_gives_back_what_is_written_beyond_what_may_be_in_flight() {
        let (_inbox, ledger) = ledger();
        let mut file = ledger.reserve_file(ONE, 64 * MIB, 0, true).unwrap();
        assert_eq!(promised(&ledger), (64 * MIB, 1));
        file.spend(4 * MIB);
        assert_eq!(promised(&ledger).0, 64 * MIB, "all of it may be queued");
        file.spend(20 * MIB);
        assert_eq!(promised(&ledger).0, 40 * MIB + IN_FLIGHT);
        assert!(file.beyond(40 * MIB).is_none());

        let mut stream = ledger.reserve_file(ONE, 0, 0, true).unwrap();
        let more = stream.beyond(MIB).unwrap();
        stream.absorb(ledger.grow(more).unwrap());
        stream.spend(MIB);
        assert_eq!(promised(&ledger), (40 * MIB + IN_FLIGHT + MIB, 2));
        drop((file, stream));
        assert_eq!(promised(&ledger), (0, 0));
    }
}
