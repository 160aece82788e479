//! One line for an operator's log on stderr, stamped with the UTC time (RFC 3339, to
//! the second, by humantime): what `serve` writes, so that a daemon's log says when each
//! session, refusal and reload happened. A server outlives the terminal it started from:
//! a closed stderr must not take it down, as `eprintln!` would by panicking.

use std::io::Write;
use std::time::SystemTime;

/// Writes `args` as one stamped line; a failed write is dropped. Control characters are
/// escaped (`wire::escape_controls`) wherever they came from, so that what a peer sent
/// (a pattern, a message) can neither break the line nor forge another; text escaped
/// already holds none, and is written as it is.
pub fn line(args: std::fmt::Arguments<'_>) {
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    let text = args.to_string();
    let text = tpc_core::wire::escape_controls(&text);
    let _ = writeln!(std::io::stderr().lock(), "{now} {text}");
}
