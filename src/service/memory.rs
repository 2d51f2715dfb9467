//! Process memory: freed heap goes back to the system between messages.
//!
//! glibc's malloc gives each thread that allocates under contention its own arena (up to eight
//! per core) and keeps what is freed in it. The batch step and the product builds run on
//! tokio's blocking threads, a different one from day to day, so each day's peak stayed resident
//! in another arena: the worker's RSS doubled over five 100k-row days. Two arenas, and a trim
//! after each piece of blocking work, keep it flat.
//!
//! `malloc_trim` alone does not shrink the top of the second arena: glibc gives that back only
//! when a free leaves more than the trim threshold there, and that threshold follows the largest
//! block freed so far (up to 64 MiB). After a batch step the top often held 4-8 MiB more, and the
//! RSS read between days moved by up to a quarter. [`release_free`] lowers the threshold for one
//! free of its own, in the arena of the thread that did the work. During the work the thresholds
//! stay fixed where glibc's dynamic ones settle: a 2 MiB trim threshold instead made a 1M-row
//! batch step fault three times as many pages in one run of two, and a single arena cost the
//! worker 6% more CPU on a 1M-row day. Every command sets them, not only the roles: glibc starts
//! at 128 KiB and raises its thresholds only as large blocks are freed, so until then each large
//! buffer was a fresh mapping, faulted in and zeroed again (`datashare clean` on 1M rows: half
//! its page faults, 7% of its CPU).

use std::sync::Mutex;

/// Arenas glibc may create: one for the async threads, one for the blocking work.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 2;

/// Blocks from this size up get their own mapping, unmapped when freed: glibc's largest allowed,
/// where its dynamic threshold settles once a large block has been freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Free memory at the top of an arena beyond this goes back when a block is freed (during work):
/// twice [`MMAP_THRESHOLD`], as glibc's dynamic threshold.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 64 << 20;

/// The trim threshold while [`release_free`] frees its own block: glibc's default.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_NOW: libc::c_int = 128 << 10;

/// A block that, freed, makes glibc consider trimming its arena's top (64 KiB and more).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const PROBE_BYTES: usize = 128 << 10;

/// One [`release_free`] at a time: each sets the threshold back when it is done.
static RELEASING: Mutex<()> = Mutex::new(());

/// How long an idle blocking thread waits for work before it exits (tokio's default is 10 s).
/// A batch step spreads its work over tens of blocking threads; each keeps its stack pages and
/// its allocator cache while it lives. Gone a second after the work ends, they give that memory
/// back between messages instead of holding it until the next burst.
pub const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// The one runtime of the roles and of the commands that talk to Google Cloud: the allocator set
/// for a long-lived service ([`configure_allocator`]), idle blocking threads gone after
/// [`BLOCKING_KEEP_ALIVE`].
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    configure_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()
}

/// Sets glibc's malloc for the process: [`ARENAS`] arenas, fixed mapping and trim thresholds
/// (called first by the command line, and by [`runtime`] before its threads start).
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings (glibc serializes it); the command line
    // calls it before any thread starts, `runtime` again before its threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Returns freed heap pages to the system (after a large piece of work, on the thread that did
/// it): the top of this thread's arena, then the free pages of every arena.
pub fn release_free() {
    let _one = RELEASING.lock().unwrap_or_else(|e| e.into_inner());
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings (glibc serializes it); the probe is a block
    // of our own, freed once; malloc_trim only releases free memory and is thread-safe.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_NOW);
        let probe = std::hint::black_box(libc::malloc(PROBE_BYTES));
        libc::free(probe);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
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
