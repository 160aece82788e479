//! BLAKE3 chunk hashes and the file digest derived from them.
//!
//! A file digest is not the BLAKE3 of the whole file: it is derived from the chunk hashes
//! (and the size), so shards can hash their ranges independently and the owner of the file
//! combines them without re-reading anything.

use std::fmt;

/// BLAKE3 hash of one chunk's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkHash(pub [u8; 32]);

/// Digest of a whole file: derived from its size and ordered chunk hashes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileDigest(pub [u8; 32]);

/// Domain separation: a file digest can never collide with a plain chunk hash.
const FILE_DIGEST_CONTEXT: &str = "tpc-xfer 2026-11 file digest v1";

impl ChunkHash {
    pub fn of(bytes: &[u8]) -> Self {
        ChunkHash(*blake3::hash(bytes).as_bytes())
    }
}

impl FileDigest {
    /// Combines ordered chunk hashes into the file digest.
    pub fn from_chunks(size_bytes: u64, chunks: &[ChunkHash]) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key(FILE_DIGEST_CONTEXT);
        hasher.update(&size_bytes.to_le_bytes());
        hasher.update(&(chunks.len() as u64).to_le_bytes());
        for chunk in chunks {
            hasher.update(&chunk.0);
        }
        FileDigest(*hasher.finalize().as_bytes())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_order_size_and_content() {
        let a = ChunkHash::of(b"a");
        let b = ChunkHash::of(b"b");
        let ab = FileDigest::from_chunks(2, &[a, b]);
        assert_ne!(ab, FileDigest::from_chunks(2, &[b, a]));
        assert_ne!(ab, FileDigest::from_chunks(3, &[a, b]));
        assert_eq!(ab, FileDigest::from_chunks(2, &[a, b]));
        assert_ne!(FileDigest::from_chunks(0, &[]).0, ChunkHash::of(b"").0);
    }
}
