//! The allocator's door: handing the kernel back the heap pages that freed memory left whole.

/// Returns every whole free page of the heap to the kernel (glibc's `malloc_trim(0)`, see
/// malloc_trim(3)). On its own glibc gives back only the top of the heap; what a load of the
/// units directory frees below the units it keeps (the files' text, the parsed layers, the
/// parsed units before they move into the supervisor) would stay resident for the life of the
/// process: about 1.5 KiB a unit (bench/analysis.md, "Where the heap goes per unit"). The call
/// walks the free lists once; corral makes it after a load, not on the loop's hot paths.
pub fn release_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a byte count and only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
