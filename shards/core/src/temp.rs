//! Names of the temporary files a run writes before renaming them into place, and of the
//! run lock that tells other runs those temporaries are alive.
//!
//! A temporary is `.tpcx.<token>.<tag>.<check>.tmp`: `token` is the writing run's
//! [`RunToken`] (64 random bits, not a pid: pids repeat, and differ between PID
//! namespaces and hosts that share a directory), `tag` names the file within the run, and
//! `check` is a keyed BLAKE3 of token and tag. Cleanup removes only names whose check
//! holds, so a user's file is never taken for one of ours unless someone computed that
//! hash on purpose. A run holds an advisory lock on `.tpcx.<token>.<check>.lock` in its
//! destination root while it has temporaries anywhere beneath; cleanup removes another
//! run's temporaries only when that lock can be taken or no longer exists
//! (`tpc_engine::temp` carries this out; docs/ARCHITECTURE.md, "Temporary files").

use std::fmt;

/// The prefix every name of ours starts with.
pub const TEMP_PREFIX: &[u8] = b".tpcx.";
/// The suffix of a temporary file.
pub const TEMP_SUFFIX: &[u8] = b".tmp";
/// The suffix of a run lock.
pub const LOCK_SUFFIX: &[u8] = b".lock";
/// Longest tag: a tag is `[0-9a-z-]`, made by the writer (a file index, a session).
pub const TAG_BYTES_MAX: usize = 48;

/// Key of the name check: "tpc-xfer temporary name, v1" padded to 32 bytes. Changing it
/// makes older runs' leftovers unrecognised (they stay, and are never deleted).
const CHECK_KEY: &[u8; 32] = b"tpc-xfer temporary name, v1\0\0\0\0\0";

/// Identifies one run (one copy, or one serving process) among every writer of a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RunToken(pub u64);

impl fmt::Display for RunToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a name in a directory is to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ours {
    /// A temporary file of run `token`.
    Temp(RunToken),
    /// The lock of run `token`.
    Lock(RunToken),
}

/// The temporary name for `tag` of run `token`. Panics on a tag outside `[0-9a-z-]` or
/// longer than `TAG_BYTES_MAX`: tags are made by our own code, never by a peer.
pub fn temp_name(token: RunToken, tag: &str) -> Vec<u8> {
    assert!(valid_tag(tag.as_bytes()), "bad temporary tag {tag:?}");
    let check = check(token, tag.as_bytes());
    format!("{}{token}.{tag}.{check:08x}.tmp", prefix()).into_bytes()
}

/// The lock file name of run `token`: `.tpcx.<token>.<check>.lock`, checked as a
/// temporary's name is (over the tag `lock`).
pub fn lock_name(token: RunToken) -> Vec<u8> {
    let check = check(token, LOCK_TAG);
    format!("{}{token}.{check:08x}.lock", prefix()).into_bytes()
}

/// The tag a lock name's check is computed over.
const LOCK_TAG: &[u8] = b"lock";

/// Whether `name` is one of our temporaries (with a valid check) or locks, and whose.
pub fn parse(name: &[u8]) -> Option<Ours> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let (token, rest) = (rest.get(..16)?, rest.get(16..)?);
    let token = RunToken(u64::from_str_radix(std::str::from_utf8(token).ok()?, 16).ok()?);
    let rest = rest.strip_prefix(b".")?;
    if let Some(check_hex) = rest.strip_suffix(LOCK_SUFFIX) {
        let got = parse_check(check_hex)?;
        return (got == check(token, LOCK_TAG)).then_some(Ours::Lock(token));
    }
    let rest = rest.strip_suffix(TEMP_SUFFIX)?;
    // `<tag>.<check:8 hex>`
    let dot = rest.len().checked_sub(9)?;
    let (tag, check_hex) = (&rest[..dot], &rest[dot..]);
    let check_hex = check_hex.strip_prefix(b".")?;
    if !valid_tag(tag) {
        return None;
    }
    (parse_check(check_hex)? == check(token, tag)).then_some(Ours::Temp(token))
}

/// Eight lowercase hex digits.
fn parse_check(hex: &[u8]) -> Option<u32> {
    if hex.len() != 8
        || !hex
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

fn prefix() -> &'static str {
    std::str::from_utf8(TEMP_PREFIX).expect("ASCII")
}

fn valid_tag(tag: &[u8]) -> bool {
    !tag.is_empty()
        && tag.len() <= TAG_BYTES_MAX
        && tag
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || *b == b'-')
}

fn check(token: RunToken, tag: &[u8]) -> u32 {
    let mut h = blake3::Hasher::new_keyed(CHECK_KEY);
    h.update(&token.0.to_le_bytes());
    h.update(tag);
    let out = h.finalize();
    u32::from_le_bytes(out.as_bytes()[..4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_checked_names_are_ours() {
        let t = RunToken(0x0123_4567_89ab_cdef);
        let name = temp_name(t, "s1f-42");
        assert!(name.starts_with(b".tpcx.0123456789abcdef.s1f-42."));
        assert_eq!(parse(&name), Some(Ours::Temp(t)));
        assert_eq!(parse(&lock_name(t)), Some(Ours::Lock(t)));
        let lock = lock_name(t);
        for i in 0..lock.len() {
            let mut bad = lock.clone();
            bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
            assert_eq!(parse(&bad), None, "{}", String::from_utf8_lossy(&bad));
        }
        // One character off anywhere: not ours.
        for i in 0..name.len() {
            let mut bad = name.clone();
            bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
            assert_eq!(parse(&bad), None, "{}", String::from_utf8_lossy(&bad));
        }
        // The names earlier versions used, which a user may also have: never ours.
        for other in [
            &b".tpcx.999999.7.tmp"[..],
            b".tpcx.1.abc-3.tmp",
            b".tpcx.0123456789abcdef.x.tmp",
            b".tpcx.0123456789abcdef..00000000.tmp",
            b".tpcx.0123456789abcdef.lockx",
            b".tpcx.0123456789abcdef.lock",
            b".tpcx.0123456789abcdef.00000000.lock",
            b".tpcx.",
            b"",
        ] {
            assert_eq!(parse(other), None, "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    #[should_panic(expected = "bad temporary tag")]
    fn tags_are_checked() {
        temp_name(RunToken(1), "A/B");
    }

    #[test]
    fn names_fit_a_name_limit() {
        let name = temp_name(RunToken(u64::MAX), &"z".repeat(TAG_BYTES_MAX));
        assert!(name.len() <= crate::limits::NAME_BYTES_MAX);
    }
}
