//! The backing directory: loaded whole into the model at mount, and at a
//! cut (or a clean stop) replaced by the tree that survived. Owns every real
//! filesystem call crashfs makes; knows nothing about FUSE.
//!
//! The survivors are first built in a sibling staging directory
//! (`.NAME.crashfs-stage`, on the same filesystem so that unchanged files
//! are hard links, not copies), then moved into the backing directory.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::model::{DirData, FileData, Fs, Ino, Kind, ROOT, Survivor};

/// Reads `backing` into a new model in which everything is durable.
pub fn load(backing: &Path, journal: bool) -> Result<Fs> {
    let meta = fs::metadata(backing).with_context(|| format!("reading {}", backing.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", backing.display());
    }
    let mut model = Fs::new(perm(&meta), meta.uid(), meta.gid(), journal);
    let mut by_inode: HashMap<(u64, u64), Ino> = HashMap::new();
    load_dir(&mut model, backing, Path::new(""), ROOT, &mut by_inode)?;
    model.sync_all();
    Ok(model)
}

fn load_dir(model: &mut Fs, root: &Path, rel: &Path, dir: Ino, by_inode: &mut HashMap<(u64, u64), Ino>) -> Result<()> {
    let full = root.join(rel);
    for entry in fs::read_dir(&full).with_context(|| format!("listing {}", full.display()))? {
        let entry = entry?;
        let (name, rel) = (entry.file_name(), rel.join(entry.file_name()));
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir(DirData::default())
        } else if ft.is_symlink() {
            Kind::Symlink(fs::read_link(&path)?)
        } else if ft.is_file() {
            if let Some(&ino) = by_inode.get(&(meta.dev(), meta.ino())) {
                model.link(ino, dir, &name).map_err(|e| anyhow::anyhow!("linking {}: {e:?}", path.display()))?;
                continue;
            }
            let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            Kind::File(FileData::loaded(&bytes))
        } else {
            eprintln!("crashfs: skipping {} (not a file, directory or symlink)", path.display());
            continue;
        };
        let ino = model
            .create(dir, &name, kind, perm(&meta), meta.uid(), meta.gid())
            .map_err(|e| anyhow::anyhow!("loading {}: {e:?}", path.display()))?;
        if ft.is_dir() {
            load_dir(model, root, &rel, ino, by_inode)?;
        } else if ft.is_file() {
            by_inode.insert((meta.dev(), meta.ino()), ino);
            model.set_origin(ino, rel).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
    }
    Ok(())
}

fn perm(meta: &fs::Metadata) -> u16 {
    (meta.mode() & 0o7777) as u16
}

/// Replaces the contents of `backing` with `survivors`.
pub fn store(backing: &Path, survivors: &[Survivor]) -> Result<()> {
    let name = backing.file_name().unwrap_or(OsStr::new("backing")).to_string_lossy();
    let stage = backing.with_file_name(format!(".{name}.crashfs-stage"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    fs::create_dir(&stage).with_context(|| format!("creating {}", stage.display()))?;
    for s in survivors {
        write_one(backing, &stage, s)?;
    }
    for entry in fs::read_dir(backing)? {
        let p = entry?.path();
        if fs::symlink_metadata(&p)?.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) }
            .with_context(|| format!("removing {}", p.display()))?;
    }
    for entry in fs::read_dir(&stage)? {
        let entry = entry?;
        fs::rename(entry.path(), backing.join(entry.file_name()))
            .with_context(|| format!("moving {} into {}", entry.path().display(), backing.display()))?;
    }
    fs::remove_dir(&stage).with_context(|| format!("removing {}", stage.display()))?;
    Ok(())
}

fn write_one(backing: &Path, stage: &Path, s: &Survivor) -> Result<()> {
    let at = |p: &PathBuf| stage.join(p);
    match s {
        Survivor::Dir { path, perm, uid, gid } => {
            fs::create_dir(at(path)).with_context(|| format!("creating {}", at(path).display()))?;
            finish(&at(path), *perm, *uid, *gid)?;
        }
        Survivor::File { path, perm, uid, gid, origin, bytes } => {
            match (bytes, origin) {
                (None, Some(origin)) => fs::hard_link(backing.join(origin), at(path))
                    .with_context(|| format!("linking {} to {}", at(path).display(), origin.display()))?,
                (bytes, _) => fs::write(at(path), bytes.as_deref().unwrap_or_default())
                    .with_context(|| format!("writing {}", at(path).display()))?,
            }
            finish(&at(path), *perm, *uid, *gid)?;
        }
        Survivor::HardLink { path, to } => {
            fs::hard_link(at(to), at(path)).with_context(|| format!("linking {}", at(path).display()))?
        }
        Survivor::Symlink { path, target } => std::os::unix::fs::symlink(target, at(path))
            .with_context(|| format!("creating symlink {}", at(path).display()))?,
    }
    Ok(())
}

fn finish(path: &Path, perm: u16, uid: u32, gid: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(perm.into()))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    Ok(())
}
