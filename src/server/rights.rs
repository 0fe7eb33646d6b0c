//! What a haul session may do, and how the server decides it.
//!
//! A session's [`Rights`] come from one thing only: which of the server's
//! secrets completed the encrypted handshake (`secure::upgrade_server`
//! finds it by trying each on the client's first message), or, on a
//! server with no secret at all, from the server's flags. No field of the
//! Hello or of any other message chooses them, so a client cannot ask for
//! more than its secret gives.
//!
//! | secret the session holds | send | get and list |
//! |---|---|---|
//! | none, on a server with no secret | yes | with `--allow-get` |
//! | the main one (`--token-file`, `HAUL_TOKEN`) | yes | when the server shares: `--allow-get` or `--get-token-file` |
//! | `--send-token-file` | yes | no |
//! | `--get-token-file` | no | yes |
//!
//! On a server with any secret, a session without one is refused at its
//! Hello. The main secret gets get and list only when the server shares,
//! so that a private server started with `--token-file` alone does not
//! start revealing its files after an upgrade.

use std::fmt;

use crate::secure::{MAX_SECRETS, Secret};

/// What one session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rights {
    /// Offer files and directories, to be stored.
    pub send: bool,
    /// Fetch stored files and list them.
    pub get: bool,
}

impl Rights {
    /// Before the handshake has said otherwise, a session may do nothing.
    pub const NONE: Rights = Rights {
        send: false,
        get: false,
    };
    pub const SEND: Rights = Rights {
        send: true,
        get: false,
    };
    pub const GET: Rights = Rights {
        send: false,
        get: true,
    };
    pub const ALL: Rights = Rights {
        send: true,
        get: true,
    };

    /// Why a session with these rights may not send: what its `Error`
    /// frame says.
    pub fn send_refusal(self) -> &'static str {
        if self.get {
            "this secret may not send to this server; it may only get and list"
        } else {
            "this secret may not send to this server"
        }
    }

    /// Why a session with these rights may not get or list: what its
    /// `Error` frame says, on a server with a secret (`secret`) or without.
    pub fn get_refusal(self, secret: bool) -> &'static str {
        if secret {
            "this secret may not get or list here"
        } else {
            "this server does not share its files; its operator can start it with --allow-get"
        }
    }
}

/// Which of the server's secrets, named after the option that gives it
/// (the main one may come from `HAUL_TOKEN` instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretRole {
    /// `--token-file` or `HAUL_TOKEN`: send, and get where the server shares.
    Main,
    /// `--send-token-file`: send only.
    SendOnly,
    /// `--get-token-file`: get and list only.
    GetOnly,
}

impl fmt::Display for SecretRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretRole::Main => "--token-file",
            SecretRole::SendOnly => "--send-token-file",
            SecretRole::GetOnly => "--get-token-file",
        })
    }
}

/// Who may do what on a server: its secrets, and whether it shares its
/// directory with sessions that hold no secret of their own for it.
#[derive(Clone, Default)]
pub struct Access {
    /// The main secret: send, and get and list when the server shares.
    pub main: Option<Secret>,
    /// A secret that may only send.
    pub send_only: Option<Secret>,
    /// A secret that may only get and list; giving it makes the server
    /// share.
    pub get_only: Option<Secret>,
    /// `--allow-get`: share the directory, with sessions of the main
    /// secret, or with everyone on a server with no secret.
    pub allow_get: bool,
}

impl Access {
    /// Whether the server shares its files at all.
    pub fn shares(&self) -> bool {
        self.allow_get || self.get_only.is_some()
    }

    /// Whether any secret is set: then every haul session must hold one,
    /// and is encrypted.
    pub fn has_secret(&self) -> bool {
        self.main.is_some() || self.send_only.is_some() || self.get_only.is_some()
    }

    /// The rights of a session that holds no secret; `None` when the
    /// server has one, and so refuses such a session.
    pub fn without_secret(&self) -> Option<Rights> {
        (!self.has_secret()).then_some(Rights {
            send: true,
            get: self.allow_get,
        })
    }

    /// The secrets a session may hold, each with the rights it gives; at
    /// most [`MAX_SECRETS`].
    pub fn keys(&self) -> Vec<(Secret, Rights)> {
        let main = Rights {
            send: true,
            get: self.shares(),
        };
        let keys: Vec<(Secret, Rights)> = [
            (&self.main, main),
            (&self.send_only, Rights::SEND),
            (&self.get_only, Rights::GET),
        ]
        .into_iter()
        .filter_map(|(secret, rights)| secret.clone().map(|secret| (secret, rights)))
        .collect();
        debug_assert!(keys.len() <= MAX_SECRETS);
        keys
    }

    /// Two secrets that are the same, if any: each set of rights needs a
    /// secret of its own, or a holder of one would get the other's rights.
    pub fn same_secrets(&self) -> Option<(SecretRole, SecretRole)> {
        let roles = [
            (SecretRole::Main, &self.main),
            (SecretRole::SendOnly, &self.send_only),
            (SecretRole::GetOnly, &self.get_only),
        ];
        roles.iter().enumerate().find_map(|(at, (first, one))| {
            roles[at + 1..]
                .iter()
                .find_map(|(second, other)| match (one, other) {
                    (Some(one), Some(other)) if one.same_as(other) => Some((*first, *second)),
                    _ => None,
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> Option<Secret> {
        Some(Secret::new(text).unwrap())
    }

    fn rights_of(access: &Access) -> Vec<Rights> {
        access
            .keys()
            .into_iter()
            .map(|(_, rights)| rights)
            .collect()
    }

    #[test]
    fn rights_follow_the_table() {
        let none = Access::default();
        assert_eq!(none.without_secret(), Some(Rights::SEND));
        assert!(none.keys().is_empty());
        let open_share = Access {
            allow_get: true,
            ..Access::default()
        };
        assert_eq!(open_share.without_secret(), Some(Rights::ALL));

        let private = Access {
            main: secret("the main secret, long"),
            ..Access::default()
        };
        assert_eq!(private.without_secret(), None);
        assert_eq!(
            rights_of(&private),
            [Rights::SEND],
            "no get after an upgrade"
        );
        let shared = Access {
            allow_get: true,
            ..private.clone()
        };
        assert_eq!(rights_of(&shared), [Rights::ALL]);

        let three = Access {
            send_only: secret("the send secret, long"),
            get_only: secret("the get secret, long"),
            ..private
        };
        assert_eq!(
            rights_of(&three),
            [Rights::ALL, Rights::SEND, Rights::GET],
            "a get secret makes the server share with the main one too"
        );
        let read_only = Access {
            get_only: secret("the get secret, long"),
            ..Access::default()
        };
        assert_eq!(read_only.without_secret(), None);
        assert_eq!(rights_of(&read_only), [Rights::GET]);
    }

    #[test]
    fn equal_secrets_are_found_and_named_by_their_options() {
        let access = Access {
            main: secret("one secret, long enough"),
            send_only: secret("another secret, long"),
            get_only: secret("  one secret, long enough\n"),
            allow_get: false,
        };
        assert_eq!(
            access.same_secrets(),
            Some((SecretRole::Main, SecretRole::GetOnly))
        );
        let access = Access {
            get_only: secret("another secret, long"),
            ..access
        };
        assert_eq!(
            access.same_secrets(),
            Some((SecretRole::SendOnly, SecretRole::GetOnly))
        );
        let access = Access {
            main: None,
            get_only: secret("a third secret, long"),
            ..access
        };
        assert_eq!(access.same_secrets(), None);
        assert_eq!(SecretRole::GetOnly.to_string(), "--get-token-file");
    }
}
