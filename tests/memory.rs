//! The roles' runtime gives memory back between messages: idle blocking threads exit after
//! `BLOCKING_KEEP_ALIVE`, and large blocks freed by blocking work go back to the system with
//! `release_free`, whichever arena they were in. A test binary of its own: it reads the whole process's threads and resident
//! memory, which other tests running beside it would change.

use std::time::Duration;

use datashare::service::memory::{BLOCKING_KEEP_ALIVE, release_free, runtime};

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count)
}

/// Anonymous resident memory of this process (heap and stacks), KiB.
fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Four blocking threads each write every page of a 16 MiB block, all held at once (so the
/// blocks are spread over the allocator's arenas), free it and release what is free, as
/// the roles' blocking work does.
async fn blocks_freed_and_released() {
    let all_held = std::sync::Arc::new(std::sync::Barrier::new(4));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let all_held = all_held.clone();
            tokio::task::spawn_blocking(move || {
                let block = std::hint::black_box(vec![1u8; 16 << 20]);
                all_held.wait();
                drop(block);
                release_free();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[test]
fn the_runtime_gives_back_idle_threads_and_freed_blocks() {
    let rt = runtime().unwrap();
    let (threads_before, anon_before) = (threads(), rss_anon_kib());

    // A burst of blocking work (a batch step's), then idle.
    rt.block_on(async {
        let burst: Vec<_> = (0..16)
            .map(|_| tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(100))))
            .collect();
        for task in burst {
            task.await.unwrap();
        }
    });
    assert!(
        threads() >= threads_before + 16,
        "the burst ran on its own threads"
    );
    std::thread::sleep(BLOCKING_KEEP_ALIVE + Duration::from_secs(1));
    assert!(
        threads() <= threads_before,
        "idle blocking threads still alive: {} threads, {threads_before} before the burst",
        threads()
    );

    // 64 MiB written and freed, twice: below the trim threshold during work, the blocks stay at
    // the top of their arenas until `release_free` gives them back.
    rt.block_on(async {
        blocks_freed_and_released().await;
        blocks_freed_and_released().await;
    });
    let grown = rss_anon_kib().saturating_sub(anon_before);
    assert!(
        grown < 8 << 10,
        "{grown} KiB of freed blocks still resident"
    );
}
