//! crashfs against its promise: after a cut the backing directory holds
//! exactly what was synced. Real FUSE mounts (root and /dev/fuse; CI has
//! both): a test that cannot mount fails, it never skips.

#[path = "../harness.rs"]
mod harness;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use harness::CrashFs;

struct Rig {
    _dir: tempfile::TempDir,
    backing: PathBuf,
    mnt: PathBuf,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    Rig { _dir: dir, backing, mnt }
}

fn mount(r: &Rig, args: &[&str]) -> CrashFs {
    CrashFs::mount(Path::new(env!("CARGO_BIN_EXE_crashfs")), &r.backing, &r.mnt, args)
}

fn fsync_dir(p: &Path) {
    File::open(p).and_then(|d| d.sync_all()).unwrap_or_else(|e| panic!("fsync {}: {e}", p.display()));
}

fn names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    v.sort();
    v
}

#[test]
fn synced_data_survives_a_cut_and_unsynced_data_does_not() {
    let r = rig();
    let fs_ = mount(&r, &[]);
    let mut f = File::create(r.mnt.join("log")).unwrap();
    f.write_all(b"synced").unwrap();
    f.sync_data().unwrap();
    fsync_dir(&r.mnt);
    f.write_all(b" and lost").unwrap();
    assert_eq!(fs::read(r.mnt.join("log")).unwrap(), b"synced and lost", "reads see unsynced writes");
    fs::write(r.mnt.join("never-synced"), b"x").unwrap();
    fs_.cut("cut");
    assert_eq!(names(&r.backing), ["log"]);
    assert_eq!(fs::read(r.backing.join("log")).unwrap(), b"synced");
}

#[test]
fn a_file_synced_but_not_its_directory_is_gone_unless_journalled() {
    for (args, survives) in [(&[][..], false), (&["--journal"][..], true)] {
        let r = rig();
        let fs_ = mount(&r, args);
        let mut f = File::create(r.mnt.join("new")).unwrap();
        f.write_all(b"data").unwrap();
        f.sync_all().unwrap();
        fs_.cut("cut");
        assert_eq!(r.backing.join("new").exists(), survives, "crashfs {args:?}");
    }
}

#[test]
fn a_rename_without_a_directory_fsync_is_undone() {
    let r = rig();
    fs::write(r.backing.join("current"), b"old").unwrap();
    let fs_ = mount(&r, &[]);
    // The atomic-replace idiom, missing its last step.
    let mut tmp = File::create(r.mnt.join("current.tmp")).unwrap();
    tmp.write_all(b"new").unwrap();
    tmp.sync_all().unwrap();
    fs::rename(r.mnt.join("current.tmp"), r.mnt.join("current")).unwrap();
    assert_eq!(fs::read(r.mnt.join("current")).unwrap(), b"new");
    fs_.cut("cut");
    assert_eq!(names(&r.backing), ["current"]);
    assert_eq!(fs::read(r.backing.join("current")).unwrap(), b"old");

    // With the directory fsync, the new content is what survives.
    let fs_ = mount(&r, &[]);
    let mut tmp = File::create(r.mnt.join("current.tmp")).unwrap();
    tmp.write_all(b"new").unwrap();
    tmp.sync_all().unwrap();
    fs::rename(r.mnt.join("current.tmp"), r.mnt.join("current")).unwrap();
    fsync_dir(&r.mnt);
    fs_.cut("cut");
    assert_eq!(names(&r.backing), ["current"]);
    assert_eq!(fs::read(r.backing.join("current")).unwrap(), b"new");
}

#[test]
fn a_rename_of_an_unsynced_file_leaves_it_empty() {
    // The classic field failure: new name durable, content not.
    let r = rig();
    fs::write(r.backing.join("state.json"), b"{\"v\":1}").unwrap();
    let fs_ = mount(&r, &[]);
    fs::write(r.mnt.join("state.tmp"), b"{\"v\":2}").unwrap();
    fs::rename(r.mnt.join("state.tmp"), r.mnt.join("state.json")).unwrap();
    fsync_dir(&r.mnt);
    fs_.cut("cut");
    assert_eq!(fs::read(r.backing.join("state.json")).unwrap(), b"");
}

#[test]
fn an_unlink_without_a_directory_fsync_is_undone() {
    let r = rig();
    fs::create_dir(r.backing.join("sub")).unwrap();
    fs::write(r.backing.join("sub/keep"), b"k").unwrap();
    let fs_ = mount(&r, &[]);
    fs::remove_file(r.mnt.join("sub/keep")).unwrap();
    fsync_dir(&r.mnt); // the parent's sync does not cover the child directory
    fs_.cut("cut");
    assert_eq!(fs::read(r.backing.join("sub/keep")).unwrap(), b"k");
}

#[test]
fn a_torn_write_leaves_a_prefix_of_the_last_write() {
    let r = rig();
    fs::write(r.backing.join("f"), b"0000000000").unwrap();
    let fs_ = mount(&r, &[]);
    let mut f = OpenOptions::new().write(true).open(r.mnt.join("f")).unwrap();
    f.write_all(b"abcdef").unwrap();
    fs_.cut("cut tear=2");
    assert_eq!(fs::read(r.backing.join("f")).unwrap(), b"ab00000000");
}

#[test]
fn an_o_dsync_write_is_durable_at_once() {
    let r = rig();
    fs::write(r.backing.join("meta"), b"").unwrap();
    let fs_ = mount(&r, &[]);
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DSYNC.bits() as i32)
        .open(r.mnt.join("meta"))
        .unwrap();
    f.write_all(b"m1").unwrap();
    fs_.cut("cut");
    assert_eq!(fs::read(r.backing.join("meta")).unwrap(), b"m1");
}

#[test]
fn reorder_lets_some_later_writes_survive_earlier_lost_ones() {
    // 64 unsynced one-byte writes: with reorder some survive, not all, and
    // not as a prefix (the same seed gives the same survivors).
    let r = rig();
    fs::write(r.backing.join("f"), vec![b'.'; 64]).unwrap();
    let fs_ = mount(&r, &[]);
    let mut f = OpenOptions::new().write(true).open(r.mnt.join("f")).unwrap();
    for _ in 0..64 {
        f.write_all(b"x").unwrap();
    }
    fs_.cut("cut reorder seed=42");
    let got = fs::read(r.backing.join("f")).unwrap();
    let kept = got.iter().filter(|&&b| b == b'x').count();
    assert!(kept > 0 && kept < 64, "{}", String::from_utf8_lossy(&got));
    let prefix = got.iter().take_while(|&&b| b == b'x').count();
    assert!(prefix < kept, "survivors were a prefix: {}", String::from_utf8_lossy(&got));
}

#[test]
fn a_clean_stop_keeps_everything() {
    let r = rig();
    let fs_ = mount(&r, &[]);
    fs::create_dir(r.mnt.join("d")).unwrap();
    fs::write(r.mnt.join("d/f"), b"all of it").unwrap();
    std::os::unix::fs::symlink("d/f", r.mnt.join("link")).unwrap();
    fs_.cut("stop");
    assert_eq!(fs::read(r.backing.join("link")).unwrap(), b"all of it");
}

type Db<'e> = heed::Database<'e, heed::types::U64<heed::byteorder::BE>, heed::types::Bytes>;

/// The unnamed database, created if needed.
fn db(env: &heed::Env) -> Db<'_> {
    let wtxn = env.write_txn().unwrap();
    env.create_databases_and_commit(wtxn, |opener, wtxn| {
        let d = opener.create_database::<heed::types::U64<heed::byteorder::BE>, heed::types::Bytes>(wtxn, None)?;
        Ok::<_, heed::Error>(heed::CommitOrAbort::<_, ()>::Commit(d))
    })
    .unwrap()
    .unwrap_commit()
}

fn put_each(env: &heed::Env, db: &Db<'_>, range: std::ops::Range<u64>) {
    for i in range {
        let mut wtxn = env.write_txn().unwrap();
        db.put(&mut wtxn, &i, &[i as u8; 300]).unwrap();
        wtxn.commit().unwrap();
    }
}

#[test]
fn lmdb_synced_commits_survive_a_cut_and_no_sync_commits_do_not() {
    // What LMDB calls (heed defaults, no WRITE_MAP): pwrite of pages and
    // fdatasync, then the meta page through an O_DSYNC descriptor; reads
    // through a shared read-only mmap; the lock file is a shared writable
    // mmap. crashfs must serve all of it.
    let r = rig();
    let fs_ = mount(&r, &[]);
    let db_dir = r.mnt.join("db");
    fs::create_dir(&db_dir).unwrap();
    {
        let env = unsafe { heed::EnvOpenOptions::new().map_size(16 << 20).open(&db_dir) }.expect("LMDB on crashfs");
        // LMDB never syncs the directory it creates its files in.
        fsync_dir(&db_dir);
        fsync_dir(&r.mnt);
        let db = db(&env);
        put_each(&env, &db, 0..50);
        env.prepare_for_closing().wait();
    }
    {
        // The same store with NO_SYNC: commits reach the file, not the disk.
        let mut opts = heed::EnvOpenOptions::new();
        let env = unsafe { opts.map_size(16 << 20).flags(heed::EnvFlags::NO_SYNC).open(&db_dir) }.expect("reopen");
        let db = db(&env);
        put_each(&env, &db, 50..100);
        let rtxn = env.read_txn().unwrap();
        assert_eq!(db.len(&rtxn).unwrap(), 100, "the mount serves the NO_SYNC commits");
        drop(rtxn);
        env.prepare_for_closing().wait();
    }
    fs_.cut("cut");

    let env = unsafe { heed::EnvOpenOptions::new().map_size(16 << 20).open(r.backing.join("db")) }.expect("reopen");
    let db = db(&env);
    let rtxn = env.read_txn().unwrap();
    assert_eq!(db.len(&rtxn).unwrap(), 50);
    assert_eq!(db.get(&rtxn, &49).unwrap(), Some(&[49u8; 300][..]));
}
