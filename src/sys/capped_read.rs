//! Reading a file a config names (the config itself, a password, a CA
//! bundle, a model manifest) with a size cap, so a path that names
//! `/dev/zero`, a log or a disk image is an error naming the file instead of
//! unbounded memory. Owns the cap check only; callers choose the cap and wrap
//! the error in their own.

use std::io::{self, Read};
use std::path::Path;

/// Reads all of `path` if it holds at most `cap` bytes. A larger file is an
/// [`io::ErrorKind::FileTooLarge`] error saying the cap; at most `cap + 1`
/// bytes are read to find out, whatever the file is.
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(io::Error::new(io::ErrorKind::FileTooLarge, format!("larger than {cap} bytes")));
    }
    Ok(bytes)
}

/// [`read_capped`] for a text file: UTF-8 or an [`io::ErrorKind::InvalidData`] error.
pub fn read_capped_to_string(path: &Path, cap: u64) -> io::Result<String> {
    String::from_utf8(read_capped(path, cap)?).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_is_refused_after_reading_one_byte_past_the_cap() {
        let e = read_capped(Path::new("/dev/zero"), 4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert!(e.to_string().contains("4096"), "{e}");
    }

    #[test]
    fn a_file_at_the_cap_is_read_whole_and_one_byte_more_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abcd").unwrap();
        assert_eq!(read_capped(&p, 4).unwrap(), b"abcd");
        assert_eq!(read_capped(&p, 3).unwrap_err().kind(), io::ErrorKind::FileTooLarge);
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert_eq!(read_capped_to_string(&p, 4).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
