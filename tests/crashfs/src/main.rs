//! crashfs: a FUSE filesystem for power-cut tests (docs/power-loss.md).
//!
//! ```text
//! crashfs [--journal] [--seed N] --control SOCKET BACKING MOUNTPOINT
//! ```
//!
//! Serves the tree of BACKING at MOUNTPOINT from memory, and forgets what was
//! not synced when told over the control socket (one command per
//! connection, one line each way):
//!
//! - `cut [tear=N|tear=random] [reorder] [seed=N]`: power is lost. Every
//!   request fails from this instant; BACKING is replaced by what was
//!   durable (see `model.rs`), the mount is detached, crashfs exits 0.
//! - `stop`: a clean shutdown: everything is synced, written back, unmounted.
//! - `sync`: everything becomes durable (`sync(2)`), the mount stays.
//! - `stats`: `ok unsynced_changes=N unsynced_bytes=N unsynced_dirs=N`.
//!
//! Answers start with `ok` or `err`. The control socket is bound only once
//! the mount is up, so a connection to it means "mounted".

mod disk;
mod fuse;
mod model;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};

use model::{CutOptions, Rng};

struct Args {
    backing: PathBuf,
    mountpoint: PathBuf,
    control: PathBuf,
    journal: bool,
    seed: u64,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args_os().skip(1);
    let (mut control, mut journal, mut seed, mut pos) = (None, false, 1u64, Vec::new());
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--journal") => journal = true,
            Some("--control") => control = it.next().map(PathBuf::from),
            Some("--seed") => {
                seed = it.next().and_then(|s| s.to_str()?.parse().ok()).context("--seed takes a number")?;
            }
            Some(s) if s.starts_with("--") => bail!("unknown option {s}"),
            _ => pos.push(PathBuf::from(a)),
        }
    }
    let usage = "usage: crashfs [--journal] [--seed N] --control SOCKET BACKING MOUNTPOINT";
    let [backing, mountpoint]: [PathBuf; 2] = pos.try_into().map_err(|_| anyhow::anyhow!(usage))?;
    Ok(Args { backing, mountpoint, control: control.context(usage)?, journal, seed })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let backing = args.backing.canonicalize().with_context(|| format!("backing {}", args.backing.display()))?;
    let model = disk::load(&backing, args.journal)?;
    let state = Arc::new(Mutex::new(fuse::State::new(model)));
    let fs = fuse::CrashFs { state: state.clone(), backing: backing.clone() };
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::FSName("crashfs".into()), fuser::MountOption::DefaultPermissions];
    let session = fuser::spawn_mount(fs, &args.mountpoint, &config)
        .with_context(|| format!("mounting FUSE at {} (needs root and /dev/fuse)", args.mountpoint.display()))?;
    let _ = std::fs::remove_file(&args.control);
    let listener = UnixListener::bind(&args.control).with_context(|| format!("binding {}", args.control.display()))?;
    eprintln!("crashfs: {} mounted at {}", backing.display(), args.mountpoint.display());
    let mut rng = Rng::new(args.seed);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            continue;
        }
        match command(line.trim(), &state, &backing, &mut rng) {
            Ok((answer, exit)) => {
                if exit {
                    // Detach first: open files on it (a process killed with
                    // the cut) keep it busy, and they only get EIO.
                    let detached = rustix::mount::unmount(&args.mountpoint, rustix::mount::UnmountFlags::DETACH);
                    eprintln!("crashfs: {answer}");
                    reply(
                        &conn,
                        &match detached {
                            Ok(()) => answer,
                            Err(e) => format!("err unmounting: {e}"),
                        },
                    );
                    // Leaving closes /dev/fuse: the connection is gone.
                    std::mem::forget(session);
                    return Ok(());
                }
                reply(&conn, &answer);
            }
            Err(e) => reply(&conn, &format!("err {e:#}")),
        }
    }
    Ok(())
}

fn reply(mut conn: &UnixStream, line: &str) {
    let _ = writeln!(conn, "{line}");
}

/// Runs one control command; `true`: crashfs must now unmount and exit.
fn command(line: &str, state: &Mutex<fuse::State>, backing: &std::path::Path, rng: &mut Rng) -> Result<(String, bool)> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or_default();
    let mut s = state.lock().map_err(|_| anyhow::anyhow!("state lock poisoned"))?;
    if s.frozen {
        bail!("power is already cut");
    }
    match verb {
        "stats" => {
            let st = s.fs.stats();
            Ok((
                format!(
                    "ok unsynced_changes={} unsynced_bytes={} unsynced_dirs={}",
                    st.unsynced_changes, st.unsynced_bytes, st.dirs_with_unsynced_entries
                ),
                false,
            ))
        }
        "sync" => {
            s.fs.sync_all();
            Ok(("ok".into(), false))
        }
        "cut" | "stop" => {
            let mut opts = CutOptions::default();
            for w in words {
                match w.split_once('=') {
                    Some(("tear", "random")) => opts.tear = Some(None),
                    Some(("tear", n)) => opts.tear = Some(Some(n.parse().context("tear=N takes a byte count")?)),
                    Some(("seed", n)) => *rng = Rng::new(n.parse().context("seed=N takes a number")?),
                    None if w == "reorder" => opts.reorder = true,
                    _ => bail!("unknown cut option {w}"),
                }
            }
            // The cut instant: nothing after this line reaches the model.
            s.frozen = true;
            if verb == "stop" {
                s.fs.sync_all();
            }
            let st = s.fs.stats();
            let survivors = s.fs.survivors(opts, rng);
            disk::store(backing, &survivors)?;
            Ok((
                format!(
                    "ok {verb}: {} entries kept, {} unsynced changes ({} bytes) and {} directories' unsynced entries lost",
                    survivors.len(),
                    st.unsynced_changes,
                    st.unsynced_bytes,
                    st.dirs_with_unsynced_entries
                ),
                true,
            ))
        }
        _ => bail!("unknown command {verb:?} (cut, stop, sync, stats)"),
    }
}
