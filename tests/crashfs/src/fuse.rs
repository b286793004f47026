//! FUSE requests mapped onto the model. Owns the lock shared with the
//! control socket and the `frozen` flag: after a cut every request fails
//! with EIO, so nothing written after the cut instant can count.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::model::{DirData, FileData, FsError, Ino, Kind, Node};

/// Attributes and entries may be cached this long: crashfs is the only
/// writer of its tree, and the kernel updates sizes on writes itself.
const TTL: Duration = Duration::from_secs(1);

pub struct State {
    pub fs: crate::model::Fs,
    pub frozen: bool,
    /// Open handles that were opened `O_SYNC`/`O_DSYNC`: each write through
    /// them is durable at once.
    sync_handles: std::collections::HashSet<u64>,
    next_fh: u64,
}

impl State {
    pub fn new(fs: crate::model::Fs) -> Self {
        State { fs, frozen: false, sync_handles: Default::default(), next_fh: 1 }
    }
}

pub struct CrashFs {
    pub state: Arc<Mutex<State>>,
    /// For `statfs`: the numbers of the real filesystem underneath.
    pub backing: PathBuf,
}

fn errno(e: FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::Exists => Errno::EEXIST,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::NotEmpty => Errno::ENOTEMPTY,
        FsError::Invalid => Errno::EINVAL,
    }
}

fn attr(ino: Ino, n: &Node) -> FileAttr {
    let kind = match n.kind {
        Kind::File(_) => FileType::RegularFile,
        Kind::Dir(_) => FileType::Directory,
        Kind::Symlink(_) => FileType::Symlink,
    };
    let size = n.size();
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: n.mtime,
        mtime: n.mtime,
        ctime: n.ctime,
        crtime: n.ctime,
        kind,
        perm: n.perm,
        nlink: if matches!(n.kind, Kind::Dir(_)) { 2 } else { n.nlink },
        uid: n.uid,
        gid: n.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

const O_SYNC_ANY: i32 = rustix::fs::OFlags::DSYNC.bits() as i32 | rustix::fs::OFlags::SYNC.bits() as i32;

impl CrashFs {
    /// The state, or EIO once power was cut.
    fn live(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let s = self.state.lock().map_err(|_| Errno::EIO)?;
        if s.frozen { Err(Errno::EIO) } else { Ok(s) }
    }

    fn entry(&self, reply: ReplyEntry, f: impl FnOnce(&mut State) -> Result<Ino, FsError>) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        match f(&mut s).and_then(|ino| Ok((ino, attr(ino, s.fs.node(ino)?)))) {
            Ok((_, a)) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn empty(&self, reply: ReplyEmpty, f: impl FnOnce(&mut State) -> Result<(), FsError>) {
        match self.live() {
            Ok(mut s) => match f(&mut s) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn open_handle(s: &mut State, flags: i32) -> FileHandle {
        let fh = s.next_fh;
        s.next_fh += 1;
        if flags & O_SYNC_ANY != 0 {
            s.sync_handles.insert(fh);
        }
        FileHandle(fh)
    }
}

fn mode_perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

impl Filesystem for CrashFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(reply, |s| s.fs.lookup(parent.0, name))
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.live() {
            Ok(s) => match s.fs.node(ino.0) {
                Ok(n) => reply.attr(&TTL, &attr(ino.0, n)),
                Err(e) => reply.error(errno(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let r = (|| {
            if let Some(len) = size {
                s.fs.set_len(ino.0, len)?;
            }
            s.fs.set_attr(ino.0, mode.map(|m| mode_perm(m, 0)), uid, gid)?;
            Ok(attr(ino.0, s.fs.node(ino.0)?))
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.live() {
            Ok(s) => match s.fs.node(ino.0).map(|n| &n.kind) {
                Ok(Kind::Symlink(t)) => reply.data(t.as_os_str().as_encoded_bytes()),
                Ok(_) => reply.error(Errno::EINVAL),
                Err(e) => reply.error(errno(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        self.entry(reply, |s| {
            s.fs.create(parent.0, name, Kind::Dir(DirData::default()), mode_perm(mode, umask), req.uid(), req.gid())
        })
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(reply, |s| s.fs.remove(parent.0, name, false))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(reply, |s| s.fs.remove(parent.0, name, true))
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        self.entry(reply, |s| {
            s.fs.create(parent.0, link_name, Kind::Symlink(target.to_path_buf()), 0o777, req.uid(), req.gid())
        })
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        self.empty(reply, |s| s.fs.rename(parent.0, name, newparent.0, newname, no_replace))
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        self.entry(reply, |s| s.fs.link(ino.0, newparent.0, newname).map(|()| ino.0))
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.live() {
            Ok(mut s) => match s.fs.node(ino.0) {
                Ok(_) => {
                    let fh = Self::open_handle(&mut s, flags.0);
                    reply.opened(fh, FopenFlags::empty())
                }
                Err(e) => reply.error(errno(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let kind = Kind::File(FileData::default());
        let r = s.fs.create(parent.0, name, kind, mode_perm(mode, umask), req.uid(), req.gid());
        match r.and_then(|ino| Ok(attr(ino, s.fs.node(ino)?))) {
            Ok(a) => {
                let fh = Self::open_handle(&mut s, flags);
                reply.created(&TTL, &a, Generation(0), fh, FopenFlags::empty())
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.live() {
            Ok(s) => match s.fs.read(ino.0, offset, size.into()) {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let sync = flags.0 & O_SYNC_ANY != 0 || s.sync_handles.contains(&fh.0);
        let r = s.fs.write(ino.0, offset, data).and_then(|()| if sync { s.fs.fsync(ino.0) } else { Ok(()) });
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() is not a sync.
        self.empty(reply, |_| Ok(()))
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Ok(mut s) = self.state.lock() {
            s.sync_handles.remove(&fh.0);
        }
        reply.ok()
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.empty(reply, |s| s.fs.fsync(ino.0))
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let entries = match s.fs.entries(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(e)),
        };
        let mut all = vec![(".".into(), ino.0, FileType::Directory), ("..".into(), ino.0, FileType::Directory)];
        for (name, child) in entries {
            let kind = match s.fs.node(child).map(|n| &n.kind) {
                Ok(Kind::Dir(_)) => FileType::Directory,
                Ok(Kind::Symlink(_)) => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            all.push((name, child, kind));
        }
        for (i, (name, child, kind)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok()
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.empty(reply, |s| s.fs.fsync(ino.0))
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Callers (the outbox's disk-low check) need real numbers.
        match rustix::fs::statvfs(&self.backing) {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(_) => reply.error(Errno::EIO),
        }
    }
}
