//! The pure core of crashfs: an in-memory tree that keeps two states of
//! everything, what a program sees (`live`) and what a disk with a volatile
//! cache would still hold after a power cut (`durable`). No IO here: loading
//! the backing directory and writing the survivors back is `disk.rs`, the
//! FUSE mapping is `fuse.rs`.
//!
//! What becomes durable, and when (strict POSIX by default):
//! - file data and size: on `fsync`/`fdatasync` of that file (or a write
//!   through an `O_SYNC`/`O_DSYNC` handle, which the kernel follows with one);
//! - a directory's entries (create, link, unlink, rename, mkdir, rmdir,
//!   symlink): on `fsync` of that directory. A file whose entry was never
//!   synced is gone after a cut even if its data was synced;
//! - with `journal` (like ext4's metadata journal): any fsync also makes
//!   every directory change made so far durable, data still only per file;
//! - mode and owner changes: at once (not modelled).
//!
//! Inodes are never freed while mounted: an unlinked file may come back at a
//! cut if its removal was not synced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::SystemTime;

pub type Ino = u64;
pub const ROOT: Ino = 1;
const PAGE: u64 = 4096;

/// Errors of namespace and data operations, mapped to errno by `fuse.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsError {
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    Invalid,
}

/// Sparse file content in 4 KiB pages; a missing page reads as zeros.
#[derive(Clone, Default, Debug)]
pub struct Content {
    pub size: u64,
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl FileData {
    /// A file whose content is already durable (loaded from disk).
    pub fn loaded(bytes: &[u8]) -> Self {
        let c = Content::from_bytes(bytes);
        FileData { live: c.clone(), durable: c, ..Default::default() }
    }
}

impl Content {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut c = Content::default();
        c.write(0, bytes);
        c.pages.retain(|_, p| p.iter().any(|&b| b != 0));
        c
    }

    pub fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let end = self.size.min(offset.saturating_add(len));
        if offset >= end {
            return Vec::new();
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let mut pos = offset;
        while pos < end {
            let (page, within) = (pos / PAGE, pos % PAGE);
            let n = (PAGE - within).min(end - pos);
            if let Some(p) = self.pages.get(&page) {
                let dst = (pos - offset) as usize;
                out[dst..dst + n as usize].copy_from_slice(&p[within as usize..(within + n) as usize]);
            }
            pos += n;
        }
        out
    }

    /// Writes `data` at `offset`; returns the pages it touched.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> std::ops::Range<u64> {
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let (page, within) = (pos / PAGE, pos % PAGE);
            let n = (PAGE - within).min(end - pos);
            let p = self.pages.entry(page).or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            let src = (pos - offset) as usize;
            p[within as usize..(within + n) as usize].copy_from_slice(&data[src..src + n as usize]);
            pos += n;
        }
        self.size = self.size.max(end);
        offset / PAGE..end.div_ceil(PAGE)
    }

    /// Truncates or extends; returns the page whose tail was zeroed, if any.
    pub fn set_len(&mut self, len: u64) -> Option<u64> {
        let shrink = len < self.size;
        self.size = len;
        self.pages.retain(|&p, _| p * PAGE < len);
        if shrink && !len.is_multiple_of(PAGE) {
            let page = len / PAGE;
            if let Some(p) = self.pages.get_mut(&page) {
                p[(len % PAGE) as usize..].fill(0);
            }
            return Some(page);
        }
        None
    }

    pub fn to_vec(&self) -> Vec<u8> {
        self.read(0, self.size)
    }
}

/// One change to a file's data that was not synced yet, kept so a cut can
/// tear or reorder it. `seq` orders changes across all files.
#[derive(Clone, Debug)]
pub enum Change {
    Write { seq: u64, offset: u64, data: Vec<u8> },
    SetLen { seq: u64, len: u64 },
}

impl Change {
    fn seq(&self) -> u64 {
        match self {
            Change::Write { seq, .. } | Change::SetLen { seq, .. } => *seq,
        }
    }
}

#[derive(Debug, Default)]
pub struct FileData {
    pub live: Content,
    pub durable: Content,
    /// Changes since the last sync, in order.
    pub unsynced: Vec<Change>,
    dirty_pages: BTreeSet<u64>,
    /// Where this content came from in the backing directory, while the
    /// durable content is still what was loaded (lets a cut hard-link it).
    pub origin: Option<PathBuf>,
}

#[derive(Debug, Default)]
pub struct DirData {
    pub live: BTreeMap<OsString, Ino>,
    pub durable: BTreeMap<OsString, Ino>,
}

#[derive(Debug)]
pub enum Kind {
    File(FileData),
    Dir(DirData),
    Symlink(PathBuf),
}

#[derive(Debug)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits only (no file type).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Live names pointing here.
    pub nlink: u32,
}

impl Node {
    pub fn size(&self) -> u64 {
        match &self.kind {
            Kind::File(f) => f.live.size,
            Kind::Dir(d) => d.live.len() as u64,
            Kind::Symlink(t) => t.as_os_str().len() as u64,
        }
    }
}

/// What a cut keeps of the writes that were not synced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutOptions {
    /// The last unsynced write (across all files) leaves a prefix of this
    /// many bytes (`Some(None)`: a random length shorter than the write).
    pub tear: Option<Option<u64>>,
    /// Each unsynced change survives with probability 1/2, applied in order:
    /// a later write may survive an earlier one.
    pub reorder: bool,
}

/// One entry of the tree that survives a cut, parents before children.
#[derive(Debug)]
pub enum Survivor {
    Dir {
        path: PathBuf,
        perm: u16,
        uid: u32,
        gid: u32,
    },
    /// `bytes: None`: the content is unchanged since loading from `origin`.
    File {
        path: PathBuf,
        perm: u16,
        uid: u32,
        gid: u32,
        origin: Option<PathBuf>,
        bytes: Option<Vec<u8>>,
    },
    /// A second name of an inode already written at `to`.
    HardLink {
        path: PathBuf,
        to: PathBuf,
    },
    Symlink {
        path: PathBuf,
        target: PathBuf,
    },
}

/// Counts for the control socket's `stats`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub unsynced_changes: usize,
    pub unsynced_bytes: u64,
    pub dirs_with_unsynced_entries: usize,
}

/// A small deterministic generator (xorshift64*), seeded from the command
/// line so a cut can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

pub struct Fs {
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    next_seq: u64,
    /// Any fsync also makes every directory change durable (ext4-like).
    pub journal: bool,
}

impl Fs {
    /// An empty tree (root only).
    pub fn new(root_perm: u16, uid: u32, gid: u32, journal: bool) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, new_node(Kind::Dir(DirData::default()), root_perm, uid, gid));
        Fs { nodes, next_ino: ROOT + 1, next_seq: 0, journal }
    }

    pub fn node(&self, ino: Ino) -> Result<&Node, FsError> {
        self.nodes.get(&ino).ok_or(FsError::NotFound)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node, FsError> {
        self.nodes.get_mut(&ino).ok_or(FsError::NotFound)
    }

    fn dir(&self, ino: Ino) -> Result<&DirData, FsError> {
        match &self.node(ino)?.kind {
            Kind::Dir(d) => Ok(d),
            _ => Err(FsError::NotDir),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut DirData, FsError> {
        match &mut self.node_mut(ino)?.kind {
            Kind::Dir(d) => Ok(d),
            _ => Err(FsError::NotDir),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut FileData, FsError> {
        match &mut self.node_mut(ino)?.kind {
            Kind::File(f) => Ok(f),
            Kind::Dir(_) => Err(FsError::IsDir),
            Kind::Symlink(_) => Err(FsError::Invalid),
        }
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino, FsError> {
        self.dir(parent)?.live.get(name).copied().ok_or(FsError::NotFound)
    }

    /// Live entries of a directory, sorted by name.
    pub fn entries(&self, dir: Ino) -> Result<Vec<(OsString, Ino)>, FsError> {
        Ok(self.dir(dir)?.live.iter().map(|(n, i)| (n.clone(), *i)).collect())
    }

    /// Creates a node and its live entry. Used by loading too, which then
    /// marks everything durable with [`Fs::sync_all`].
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Ino, FsError> {
        if self.dir(parent)?.live.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut node = new_node(kind, perm, uid, gid);
        node.nlink = 1;
        self.nodes.insert(ino, node);
        self.dir_mut(parent)?.live.insert(name.to_owned(), ino);
        self.touch(parent);
        Ok(ino)
    }

    pub fn link(&mut self, ino: Ino, parent: Ino, name: &OsStr) -> Result<(), FsError> {
        if matches!(self.node(ino)?.kind, Kind::Dir(_)) {
            return Err(FsError::IsDir);
        }
        if self.dir(parent)?.live.contains_key(name) {
            return Err(FsError::Exists);
        }
        self.dir_mut(parent)?.live.insert(name.to_owned(), ino);
        self.node_mut(ino)?.nlink += 1;
        self.touch(parent);
        Ok(())
    }

    /// `unlink` (`dir: false`) or `rmdir` (`dir: true`).
    pub fn remove(&mut self, parent: Ino, name: &OsStr, dir: bool) -> Result<(), FsError> {
        let ino = self.lookup(parent, name)?;
        match (&self.node(ino)?.kind, dir) {
            (Kind::Dir(d), true) if !d.live.is_empty() => return Err(FsError::NotEmpty),
            (Kind::Dir(_), true) => {}
            (Kind::Dir(_), false) => return Err(FsError::IsDir),
            (_, true) => return Err(FsError::NotDir),
            (_, false) => {}
        }
        self.dir_mut(parent)?.live.remove(name);
        let n = self.node_mut(ino)?;
        n.nlink = n.nlink.saturating_sub(1);
        self.touch(parent);
        Ok(())
    }

    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), FsError> {
        let ino = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        let moving_dir = matches!(self.node(ino)?.kind, Kind::Dir(_));
        if moving_dir && self.is_under(new_parent, ino) {
            return Err(FsError::Invalid);
        }
        if let Ok(old) = self.lookup(new_parent, new_name) {
            if old == ino {
                return Ok(());
            }
            if no_replace {
                return Err(FsError::Exists);
            }
            match (&self.node(old)?.kind, moving_dir) {
                (Kind::Dir(d), true) if !d.live.is_empty() => return Err(FsError::NotEmpty),
                (Kind::Dir(_), false) => return Err(FsError::IsDir),
                (Kind::Dir(_), true) => {}
                (_, true) => return Err(FsError::NotDir),
                (_, false) => {}
            }
            let n = self.node_mut(old)?;
            n.nlink = n.nlink.saturating_sub(1);
        }
        self.dir_mut(parent)?.live.remove(name);
        self.dir_mut(new_parent)?.live.insert(new_name.to_owned(), ino);
        self.touch(parent);
        self.touch(new_parent);
        Ok(())
    }

    /// Whether `dir` is `ancestor` or lies below it (live tree).
    fn is_under(&self, dir: Ino, ancestor: Ino) -> bool {
        if dir == ancestor {
            return true;
        }
        let Ok(Kind::Dir(a)) = self.node(ancestor).map(|n| &n.kind) else { return false };
        a.live.values().any(|&c| matches!(self.node(c).map(|n| &n.kind), Ok(Kind::Dir(_))) && self.is_under(dir, c))
    }

    pub fn read(&self, ino: Ino, offset: u64, len: u64) -> Result<Vec<u8>, FsError> {
        match &self.node(ino)?.kind {
            Kind::File(f) => Ok(f.live.read(offset, len)),
            Kind::Dir(_) => Err(FsError::IsDir),
            Kind::Symlink(_) => Err(FsError::Invalid),
        }
    }

    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let seq = self.bump_seq();
        let f = self.file_mut(ino)?;
        let pages = f.live.write(offset, data);
        f.dirty_pages.extend(pages);
        f.unsynced.push(Change::Write { seq, offset, data: data.to_vec() });
        self.touch(ino);
        Ok(())
    }

    pub fn set_len(&mut self, ino: Ino, len: u64) -> Result<(), FsError> {
        let seq = self.bump_seq();
        let f = self.file_mut(ino)?;
        if let Some(page) = f.live.set_len(len) {
            f.dirty_pages.insert(page);
        }
        f.unsynced.push(Change::SetLen { seq, len });
        self.touch(ino);
        Ok(())
    }

    pub fn set_attr(&mut self, ino: Ino, perm: Option<u16>, uid: Option<u32>, gid: Option<u32>) -> Result<(), FsError> {
        let n = self.node_mut(ino)?;
        n.perm = perm.unwrap_or(n.perm);
        n.uid = uid.unwrap_or(n.uid);
        n.gid = gid.unwrap_or(n.gid);
        n.ctime = SystemTime::now();
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file, or of a directory.
    pub fn fsync(&mut self, ino: Ino) -> Result<(), FsError> {
        match &mut self.node_mut(ino)?.kind {
            Kind::File(f) => sync_file(f),
            Kind::Dir(d) => d.durable = d.live.clone(),
            Kind::Symlink(_) => {}
        }
        if self.journal {
            for n in self.nodes.values_mut() {
                if let Kind::Dir(d) = &mut n.kind {
                    d.durable = d.live.clone();
                }
            }
        }
        Ok(())
    }

    /// Everything durable (`sync(2)`, a clean shutdown, the end of loading).
    pub fn sync_all(&mut self) {
        for n in self.nodes.values_mut() {
            match &mut n.kind {
                Kind::File(f) => sync_file(f),
                Kind::Dir(d) => d.durable = d.live.clone(),
                Kind::Symlink(_) => {}
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for n in self.nodes.values() {
            match &n.kind {
                Kind::File(f) => {
                    s.unsynced_changes += f.unsynced.len();
                    s.unsynced_bytes += f
                        .unsynced
                        .iter()
                        .map(|c| match c {
                            Change::Write { data, .. } => data.len() as u64,
                            Change::SetLen { .. } => 0,
                        })
                        .sum::<u64>();
                }
                Kind::Dir(d) if d.live != d.durable => s.dirs_with_unsynced_entries += 1,
                _ => {}
            }
        }
        s
    }

    /// Marks a loaded file as coming from `origin` in the backing directory.
    pub fn set_origin(&mut self, ino: Ino, origin: PathBuf) -> Result<(), FsError> {
        self.file_mut(ino)?.origin = Some(origin);
        Ok(())
    }

    /// The tree a power cut leaves: durable entries from the root down,
    /// each file with its durable content plus what `opts` lets survive of
    /// its unsynced changes.
    pub fn survivors(&self, opts: CutOptions, rng: &mut Rng) -> Vec<Survivor> {
        let torn_seq = opts.tear.and_then(|_| self.last_unsynced_write());
        let mut out = Vec::new();
        let mut written: HashMap<Ino, PathBuf> = HashMap::new();
        let mut seen_dirs = BTreeSet::from([ROOT]);
        let mut queue = vec![(ROOT, PathBuf::new())];
        while let Some((dir, path)) = queue.pop() {
            let Ok(Kind::Dir(d)) = self.node(dir).map(|n| &n.kind) else { continue };
            for (name, &ino) in &d.durable {
                let Ok(node) = self.node(ino) else { continue };
                let p = path.join(name);
                let (perm, uid, gid) = (node.perm, node.uid, node.gid);
                match &node.kind {
                    Kind::Dir(_) => {
                        // A directory has one name; a second durable one
                        // (only possible through a torn-up history) is skipped.
                        if seen_dirs.insert(ino) {
                            out.push(Survivor::Dir { path: p.clone(), perm, uid, gid });
                            queue.push((ino, p));
                        }
                    }
                    Kind::Symlink(t) => out.push(Survivor::Symlink { path: p, target: t.clone() }),
                    Kind::File(f) => {
                        if let Some(first) = written.get(&ino) {
                            out.push(Survivor::HardLink { path: p, to: first.clone() });
                            continue;
                        }
                        written.insert(ino, p.clone());
                        let bytes = survivor_bytes(f, opts, torn_seq, rng);
                        out.push(Survivor::File { path: p, perm, uid, gid, origin: f.origin.clone(), bytes });
                    }
                }
            }
        }
        out
    }

    fn last_unsynced_write(&self) -> Option<u64> {
        self.nodes
            .values()
            .filter_map(|n| match &n.kind {
                Kind::File(f) => f.unsynced.iter().rev().find(|c| matches!(c, Change::Write { .. })).map(Change::seq),
                _ => None,
            })
            .max()
    }

    fn bump_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn touch(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            let now = SystemTime::now();
            n.mtime = now;
            n.ctime = now;
        }
    }
}

fn new_node(kind: Kind, perm: u16, uid: u32, gid: u32) -> Node {
    let now = SystemTime::now();
    Node { kind, perm, uid, gid, mtime: now, ctime: now, nlink: 1 }
}

fn sync_file(f: &mut FileData) {
    if f.unsynced.is_empty() {
        return;
    }
    for &p in &f.dirty_pages {
        match f.live.pages.get(&p) {
            Some(page) => f.durable.pages.insert(p, page.clone()),
            None => f.durable.pages.remove(&p),
        };
    }
    f.durable.size = f.live.size;
    let size = f.durable.size;
    f.durable.pages.retain(|&p, _| p * PAGE < size);
    f.dirty_pages.clear();
    f.unsynced.clear();
    f.origin = None;
}

/// The content a cut leaves of one file; `None` when that is exactly what
/// was loaded from its origin.
fn survivor_bytes(f: &FileData, opts: CutOptions, torn_seq: Option<u64>, rng: &mut Rng) -> Option<Vec<u8>> {
    let mut c = f.durable.clone();
    let mut changed = false;
    for ch in &f.unsynced {
        let torn = torn_seq == Some(ch.seq());
        if torn {
            if let Change::Write { offset, data, .. } = ch {
                let keep = match opts.tear {
                    Some(Some(n)) => n.min(data.len() as u64),
                    _ => rng.next() % (data.len() as u64).max(1),
                };
                c.write(*offset, &data[..keep as usize]);
                changed = true;
            }
        } else if opts.reorder && rng.next().is_multiple_of(2) {
            match ch {
                Change::Write { offset, data, .. } => {
                    c.write(*offset, data);
                }
                Change::SetLen { len, .. } => {
                    c.set_len(*len);
                }
            }
            changed = true;
        }
    }
    if !changed && f.origin.is_some() {
        return None;
    }
    Some(c.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs() -> Fs {
        Fs::new(0o755, 0, 0, false)
    }

    fn file(fs: &mut Fs, name: &str) -> Ino {
        fs.create(ROOT, OsStr::new(name), Kind::File(FileData::default()), 0o644, 0, 0).unwrap()
    }

    fn survivor_files(fs: &Fs, opts: CutOptions) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut rng = Rng::new(7);
        fs.survivors(opts, &mut rng)
            .into_iter()
            .filter_map(|s| match s {
                Survivor::File { path, bytes, .. } => Some((path, bytes.unwrap_or_default())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn content_reads_back_writes_across_pages_and_zeroes_truncated_tails() {
        let mut c = Content::default();
        c.write(4090, b"0123456789");
        assert_eq!(c.read(4090, 10), b"0123456789");
        assert_eq!(c.set_len(4093), Some(0));
        c.set_len(4100);
        assert_eq!(c.read(4090, 10), b"012\0\0\0\0\0\0\0");
    }

    #[test]
    fn a_created_file_survives_only_after_its_data_and_its_directory_are_synced() {
        let mut fs = fs();
        let f = file(&mut fs, "a");
        fs.write(f, 0, b"hello").unwrap();
        assert!(survivor_files(&fs, CutOptions::default()).is_empty());
        fs.fsync(f).unwrap();
        assert!(survivor_files(&fs, CutOptions::default()).is_empty(), "entry not synced");
        fs.fsync(ROOT).unwrap();
        assert_eq!(survivor_files(&fs, CutOptions::default())[&PathBuf::from("a")], b"hello");
        fs.write(f, 5, b" world").unwrap();
        assert_eq!(survivor_files(&fs, CutOptions::default())[&PathBuf::from("a")], b"hello");
    }

    #[test]
    fn journal_mode_makes_directory_changes_durable_at_any_fsync() {
        let mut fs = Fs::new(0o755, 0, 0, true);
        let f = file(&mut fs, "a");
        fs.write(f, 0, b"x").unwrap();
        fs.fsync(f).unwrap();
        assert_eq!(survivor_files(&fs, CutOptions::default())[&PathBuf::from("a")], b"x");
    }

    #[test]
    fn tear_keeps_a_prefix_of_the_last_write_only() {
        let mut fs = fs();
        let f = file(&mut fs, "a");
        fs.fsync(ROOT).unwrap();
        fs.write(f, 0, b"first").unwrap();
        fs.write(f, 5, b"second").unwrap();
        let opts = CutOptions { tear: Some(Some(3)), reorder: false };
        assert_eq!(survivor_files(&fs, opts)[&PathBuf::from("a")], b"\0\0\0\0\0sec");
    }

    #[test]
    fn rename_over_a_file_is_undone_without_a_directory_sync() {
        let mut fs = fs();
        let old = file(&mut fs, "cur");
        fs.write(old, 0, b"old").unwrap();
        fs.fsync(old).unwrap();
        fs.fsync(ROOT).unwrap();
        let tmp = file(&mut fs, "cur.tmp");
        fs.write(tmp, 0, b"new").unwrap();
        fs.fsync(tmp).unwrap();
        fs.rename(ROOT, OsStr::new("cur.tmp"), ROOT, OsStr::new("cur"), false).unwrap();
        assert_eq!(fs.read(fs.lookup(ROOT, OsStr::new("cur")).unwrap(), 0, 9).unwrap(), b"new");
        let files = survivor_files(&fs, CutOptions::default());
        assert_eq!(files.len(), 1);
        assert_eq!(files[&PathBuf::from("cur")], b"old");
        fs.fsync(ROOT).unwrap();
        assert_eq!(survivor_files(&fs, CutOptions::default())[&PathBuf::from("cur")], b"new");
    }
}
