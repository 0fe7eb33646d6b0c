//! Dead connections noticed by the kernel, on both sides: TCP keepalive
//! probes a connection that has gone quiet, and `TCP_USER_TIMEOUT` ends one
//! whose data (or probes) go unacknowledged.
//!
//! A peer that vanishes without a FIN or a reset (a laptop that sleeps, a
//! Wi-Fi link that drops, a NAT that forgets the flow) otherwise leaves the
//! other side waiting on its own timers, or forever where it has none: a
//! server holding a dead session's slot, a client blocked on a write that
//! will never be acknowledged. This module only sets socket options; it
//! never reads or writes.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use rustix::net::sockopt;

/// Quiet time before the first probe. Short enough that a dead peer is
/// suspected well within a transfer's idle timeout (60 s by default); long
/// enough that a busy or idle-but-alive connection costs a probe and its
/// answer, 2 small segments, only every 15 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);

/// Time between unanswered probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Unanswered probes after which the peer counts as gone: with the
/// interval, 15 s of silence on a path that merely drops a few packets.
const KEEPALIVE_PROBES: u32 = 3;

/// Asks the kernel to notice a dead peer on `socket`: probes after
/// [`KEEPALIVE_IDLE`] of quiet, and an error once sent data or probes have
/// gone unacknowledged for half again `idle`, the caller's own idle
/// timeout. The kernel so never gives up on a connection before the
/// application would: the application, which tells a slow peer from a
/// silent one by the bytes that still move, decides first and says why. A
/// dead peer still fails within about that time where nothing waits on a
/// timer.
pub fn notice_dead_peer(socket: &impl AsFd, idle: Duration) -> io::Result<()> {
    sockopt::set_socket_keepalive(socket, true)?;
    sockopt::set_tcp_keepidle(socket, KEEPALIVE_IDLE)?;
    sockopt::set_tcp_keepintvl(socket, KEEPALIVE_INTERVAL)?;
    sockopt::set_tcp_keepcnt(socket, KEEPALIVE_PROBES)?;
    let user_timeout = idle.saturating_add(idle / 2);
    let millis = u32::try_from(user_timeout.as_millis()).unwrap_or(u32::MAX);
    sockopt::set_tcp_user_timeout(socket, millis)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_set_to_probe_and_to_give_up_after_half_again_the_idle_time() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        notice_dead_peer(&socket, Duration::from_secs(60)).unwrap();
        assert!(sockopt::socket_keepalive(&socket).unwrap());
        assert_eq!(sockopt::tcp_keepidle(&socket).unwrap(), KEEPALIVE_IDLE);
        assert_eq!(sockopt::tcp_keepintvl(&socket).unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sockopt::tcp_keepcnt(&socket).unwrap(), KEEPALIVE_PROBES);
        assert_eq!(sockopt::tcp_user_timeout(&socket).unwrap(), 90_000);
    }
}
