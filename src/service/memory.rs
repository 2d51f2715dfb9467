//! Process memory: freed heap goes back to the system between messages.
//!
//! glibc's malloc gives each thread that allocates under contention its own arena (up to eight
//! per core) and keeps what is freed in it. The batch step and the product builds run on
//! tokio's blocking threads, a different one from day to day, so each day's peak stayed resident
//! in another arena: the worker's RSS doubled over five 100k-row days. Two arenas, and a trim
//! after each piece of blocking work, keep it flat.

/// Arenas glibc may create: one for the async threads, one for the blocking work.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 2;

/// Limits glibc to [`ARENAS`] malloc arenas (call once at start-up, before threads start).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; it is called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// How long an idle blocking thread waits for work before it exits (tokio's default is 10 s).
/// A batch step spreads its work over tens of blocking threads; each keeps its stack pages and
/// its allocator cache while it lives. Gone a second after the work ends, they give that memory
/// back between messages instead of holding it until the next burst.
pub const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// Returns freed heap pages to the system (after a large piece of work).
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The heap as the allocator sees it: (bytes in use, bytes free but held), for logs.
pub fn heap() -> Option<(usize, usize)> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let m = unsafe { libc::mallinfo2() };
        Some((m.uordblks + m.hblkhd, m.fordblks))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}
