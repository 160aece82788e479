//! `--delete` carried out beneath a held root, for the local copy and for a push's
//! server alike: list the destination beneath a landing through the root's directory
//! handles, ask `tpc_core::prune` what goes, and remove it through the same handles,
//! within a `--max-delete` budget. Nothing outside the root is reachable, and a symlink
//! at the destination is removed as a link, never followed.

use tpc_core::filter::Filter;
use tpc_core::prune;
use tpc_core::wire::MANIFEST_ENTRIES_MAX;
use tpc_core::RelPath;
use tpc_engine::confine::{ConfineError, FileKind, Root};

/// Destination entries listed at most, for all the landings of one run together: as
/// many as a manifest may hold, so that neither a destination nor a peer's list of
/// bases can make the listing grow without bound.
pub const DELETE_SCAN_ENTRIES_MAX: usize = MANIFEST_ENTRIES_MAX as usize;

/// One run's deletions: what was removed, what the budget left, what failed.
pub struct Deletion<'a> {
    root: &'a Root,
    filter: &'a Filter,
    /// `--max-delete`: removals allowed in all; `None` for no limit.
    max: Option<u64>,
    pub deleted: u64,
    /// Extraneous entries left in place because the budget ran out.
    pub left: u64,
    /// Entries that could not be removed, and why.
    pub failures: Vec<(RelPath, ConfineError)>,
    /// Every entry removed (and whether it was a directory), in order, so the caller
    /// can fix its directory's mtime and list it.
    pub removed: Vec<(RelPath, bool)>,
    /// `--dry-run`: what would be removed is counted and listed, and nothing removed.
    pub dry: bool,
    /// Entries listed so far, within `DELETE_SCAN_ENTRIES_MAX`.
    scanned: usize,
}

impl<'a> Deletion<'a> {
    pub fn new(root: &'a Root, filter: &'a Filter, max: Option<u64>) -> Deletion<'a> {
        Deletion {
            root,
            filter,
            max,
            deleted: 0,
            left: 0,
            failures: Vec::new(),
            removed: Vec::new(),
            dry: false,
            scanned: 0,
        }
    }

    /// Removes what no source holds beneath the directory `base` (relative to the root).
    /// `name` is the landing's own path among the transfer's paths, which the filter's
    /// patterns see first (`walk::transfer_name`); `held` says whether a source holds
    /// the entry at a path relative to `base`. A destination that cannot be listed in
    /// full is an error, and nothing beneath it is removed.
    pub fn beneath(
        &mut self,
        base: &RelPath,
        name: &[u8],
        held: impl Fn(&[u8]) -> bool,
    ) -> Result<(), ConfineError> {
        let room = DELETE_SCAN_ENTRIES_MAX - self.scanned;
        let (found, mut errors) = self.root.walk(base, room)?;
        self.scanned += found.len() + errors.len();
        if !errors.is_empty() {
            return Err(errors.swap_remove(0));
        }
        if found.first().is_none_or(|(_, st)| st.kind != FileKind::Dir) {
            return Ok(());
        }
        let strip = if base.is_root() {
            0
        } else {
            base.as_bytes().len() + 1
        };
        let dest: Vec<prune::Found> = found[1..]
            .iter()
            .map(|(rel, st)| prune::Found {
                path: rel.as_bytes()[strip..].to_vec(),
                is_dir: st.kind == FileKind::Dir,
            })
            .collect();
        for i in prune::extraneous(&dest, held, self.filter, name) {
            if self.max.is_some_and(|m| self.deleted >= m) {
                self.left += 1;
                continue;
            }
            let rel = &found[i + 1].0;
            let removed = if self.dry {
                Ok(())
            } else if dest[i].is_dir {
                self.root.remove_dir(rel)
            } else {
                self.root.remove_file(rel)
            };
            match removed {
                Ok(()) => {
                    self.deleted += 1;
                    self.removed.push((rel.clone(), dest[i].is_dir));
                }
                Err(e) => self.failures.push((rel.clone(), e)),
            }
        }
        Ok(())
    }
}
