//! Giving memory back after an engine load.
//!
//! Loading a model is a one-off peak: the model bytes are read and hashed,
//! ONNX Runtime builds and throws away intermediate graphs (glibc keeps those
//! freed pages in the heap: about 12 MB for the demo model), and its start-up
//! registers about a thousand kernels, touching code all over its 29 MB
//! library (with the kernel's fault-around, about 17 MB of it stays
//! resident). None of that is needed again while the device idles, yet it
//! would count as resident for the months the daemon runs. After each load
//! we hand back the freed heap and ask the kernel to drop the clean,
//! read-only file pages of our mappings; whatever the running code still
//! uses faults back in from the page cache on first touch.

use std::io::BufRead;

/// Returns freed heap pages and unused clean code pages to the kernel.
/// Cheap (one read of `/proc/self/maps`); call after an engine load, never
/// per frame.
pub fn release_after_load() {
    release_free_heap();
    let paged = page_out_read_only_files();
    tracing::debug!(mappings = paged, "released start-up pages");
}

fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        #[allow(unsafe_code)]
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim takes no pointers and may be called
        // from any thread at any time; it only takes malloc's own locks.
        #[allow(unsafe_code)]
        unsafe {
            malloc_trim(0);
        }
    }
}

/// `MADV_PAGEOUT` on every private, non-writable, file-backed mapping
/// (code and read-only data). Writable or anonymous memory is never touched,
/// so nothing is pushed to swap. Returns how many mappings were advised.
fn page_out_read_only_files() -> usize {
    let Ok(maps) = std::fs::File::open("/proc/self/maps") else {
        return 0;
    };
    let mut count = 0;
    for line in std::io::BufReader::new(maps).lines().map_while(Result::ok) {
        let Some((start, len)) = read_only_file_range(&line) else {
            continue;
        };
        // SAFETY: [start, start+len) is a whole mapping of this process, as
        // the kernel listed it a moment ago. MADV_PAGEOUT only reclaims
        // pages; for clean private file pages the contents are unchanged
        // and fault back in from the file. Should the mapping have gone
        // meanwhile, the call fails with ENOMEM and nothing happens.
        #[allow(unsafe_code)]
        let advised =
            unsafe { rustix::mm::madvise(start as *mut std::ffi::c_void, len, rustix::mm::Advice::LinuxPageOut) };
        if advised.is_ok() {
            count += 1;
        }
    }
    count
}

/// `(start, length)` of a `/proc/self/maps` line that is private, not
/// writable, and backed by a file (a path, not `[heap]`, `[vdso]`...).
fn read_only_file_range(line: &str) -> Option<(usize, usize)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?.as_bytes();
    let path = fields.nth(3)?;
    if perms.len() != 4 || perms[1] == b'w' || perms[3] != b'p' || !path.starts_with('/') {
        return None;
    }
    let (a, b) = range.split_once('-')?;
    let (start, end) = (usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?);
    (end > start).then(|| (start, end - start))
}

#[cfg(test)]
mod tests {
    use super::read_only_file_range;

    #[test]
    fn only_private_read_only_file_mappings_are_chosen() {
        let code = "7f0000000000-7f0000002000 r-xp 00000000 08:01 123 /usr/lib/libonnxruntime.so.1.31.1";
        assert_eq!(read_only_file_range(code), Some((0x7f0000000000, 0x2000)));
        let rodata = "7f0000002000-7f0000003000 r--p 00002000 08:01 123 /usr/lib/x.so";
        assert_eq!(read_only_file_range(rodata), Some((0x7f0000002000, 0x1000)));
        for line in [
            "7f0000003000-7f0000004000 rw-p 00003000 08:01 123 /usr/lib/x.so", // data: may be dirty
            "7f0000005000-7f0000006000 r--s 00000000 08:01 99 /var/lib/sparkd/data.mdb", // shared (LMDB)
            "55d000000000-55d000021000 rw-p 00000000 00:00 0 [heap]",
            "7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]",
            "7f0000007000-7f0000008000 r--p 00000000 00:00 0 ", // anonymous
            "garbage",
            "zzzz-7f00 r-xp 0 0 0 /x",
        ] {
            assert_eq!(read_only_file_range(line), None, "{line}");
        }
    }

    #[test]
    fn releasing_after_load_keeps_the_process_working() {
        // Page out our own code and data, then keep running: the pages must
        // come back transparently.
        super::release_after_load();
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
    }
}
