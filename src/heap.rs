//! Returning freed heap memory to the kernel after one-off peaks.
//!
//! Loading a model reads and verifies its bytes, and ONNX Runtime builds and
//! throws away intermediate graphs; glibc keeps those freed pages in the heap
//! (about 12 MB for the demo model), where they count as resident for the
//! months the daemon runs. One trim after each load gives them back.

/// Gives freed heap pages back to the kernel. Cheap enough to call after
/// each engine load; never call it per frame.
pub fn release_free_pages() {
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
