//! Room the outbox can still use: free space on its filesystem plus the free
//! pages inside LMDB's `data.mdb`. Owns the measurement and the arithmetic;
//! the policy at low space (replace, refuse) is the store's (`mod.rs`).
//!
//! `data.mdb` never shrinks: pages freed by acks and drops stay in the file
//! on LMDB's free list and are reused before the file grows. Judging the
//! reserve by the filesystem alone would keep a drained store on a nearly
//! full disk in its low-space mode for good.

use heed::{Env, WithoutTls};

/// LMDB's two meta pages at the start of the file (`NUM_METAS`).
const META_PAGES: u64 = 2;
/// Bytes the free list spends per free page number (`pgno_t` on 64-bit).
const FREELIST_BYTES_PER_PAGE: u64 = 8;

/// Pages of the data file as LMDB's committed state sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FilePages {
    pub page_size: u64,
    /// `me_last_pgno`: the highest page number in use; the file holds
    /// pages `0..=last_page`.
    pub last_page: u64,
    /// Branch, leaf and overflow pages of every database, the main one
    /// (which names the others) included.
    pub used: u64,
}

impl FilePages {
    /// Bytes of the data file on LMDB's free list, net of the pages the free
    /// list itself needs. Pages held back for an open reader count too; the
    /// reserve covers that lag.
    pub fn free_bytes(&self) -> u64 {
        let free = (self.last_page + 1).saturating_sub(META_PAGES).saturating_sub(self.used);
        let per_list_page = (self.page_size / FREELIST_BYTES_PER_PAGE).max(1);
        let list_pages = free.div_ceil(per_list_page);
        free.saturating_sub(list_pages).saturating_mul(self.page_size)
    }
}

/// What the store can still write without growing past its filesystem.
pub(crate) fn usable_bytes(fs_available: u64, file: Option<FilePages>) -> u64 {
    fs_available.saturating_add(file.map_or(0, |f| f.free_bytes()))
}

/// Bytes an unprivileged writer may still use on `dir`'s filesystem;
/// `None` when it cannot be read.
pub(crate) fn fs_available(dir: &std::path::Path) -> Option<u64> {
    rustix::fs::statvfs(dir).ok().map(|st| st.f_bavail.saturating_mul(st.f_frsize))
}

/// Measures the data file from the stats of every named database, taken at
/// the start of a write transaction (or in a read transaction):
/// `me_last_pgno` is the latest committed meta's, so the stats must be of
/// that same state.
pub(crate) fn file_pages(env: &Env<WithoutTls>, named: &[heed::DatabaseStat]) -> FilePages {
    let main = env.unnamed_database_stat();
    let pages = |s: &heed::DatabaseStat| (s.branch_pages + s.leaf_pages + s.overflow_pages) as u64;
    let used = pages(&main) + named.iter().map(pages).sum::<u64>();
    FilePages { page_size: u64::from(main.page_size), last_page: env.info().last_page_number as u64, used }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_pages_inside_the_file_count_net_of_meta_and_free_list_pages() {
        // 2 meta + 100 used + 1000 free pages of 4 KiB; 1000 page numbers
        // take 2 pages of free list.
        let f = FilePages { page_size: 4096, last_page: 1101, used: 100 };
        assert_eq!(f.free_bytes(), (1000 - 2) * 4096);
        assert_eq!(usable_bytes(512 * 1024, Some(f)), 512 * 1024 + (1000 - 2) * 4096);
        // Nothing free: a full file leaves only the filesystem.
        let full = FilePages { page_size: 16384, last_page: 101, used: 100 };
        assert_eq!(full.free_bytes(), 0);
        assert_eq!(usable_bytes(7, Some(full)), 7);
        assert_eq!(usable_bytes(7, None), 7);
        // Stats from a later state than the meta never go negative.
        let odd = FilePages { page_size: 4096, last_page: 10, used: 50 };
        assert_eq!(odd.free_bytes(), 0);
        assert_eq!(usable_bytes(u64::MAX, Some(f)), u64::MAX);
    }
}
