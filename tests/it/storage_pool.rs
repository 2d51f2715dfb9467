//! The storage client's pooled connections: `Gcs::renew_connections` (called at the end of
//! each batch step) closes the idle ones, and with them the read buffers the day's downloads
//! grew, instead of keeping them until the next day's requests.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use datashare::gcp::Gcs;
use futures::future::try_join_all;

use crate::harness::Stack;

/// The inodes of this process's sockets.
fn own_sockets() -> HashSet<u64> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// How many of this process's TCP connections to `port` are established.
fn connections_to(port: u16) -> usize {
    let own = own_sockets();
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = f
                .get(2)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let inode = f.get(9).and_then(|i| i.parse::<u64>().ok());
            remote_port == Some(port)
                && f.get(3) == Some(&"01")
                && inode.is_some_and(|i| own.contains(&i))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_the_storage_connections_closes_the_idle_ones() {
    let stack = Stack::up(&[]);
    let endpoint = stack.env["STORAGE_EMULATOR_HOST"].clone();
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let gcs = Gcs::connect(Some(&endpoint)).await.expect("storage client");
    let bucket = stack.env["DATASHARE_BUCKET_CURATED"].clone();
    gcs.write(&bucket, "pool/a.bin", vec![7u8; 1 << 20], None)
        .await
        .unwrap();
    // Reads side by side: each takes a connection of its own, then leaves it idle in the pool.
    let reads = (0..4).map(|_| gcs.read(&bucket, "pool/a.bin", None));
    let bodies = try_join_all(reads).await.unwrap();
    assert!(
        bodies
            .iter()
            .all(|b| b.as_ref().unwrap().0.len() == 1 << 20)
    );
    let pooled = connections_to(port);
    assert!(
        pooled >= 2,
        "{pooled} idle connections after reads side by side"
    );

    gcs.renew_connections().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while connections_to(port) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        connections_to(port),
        0,
        "the old pool's connections stayed open"
    );

    // The new pool serves the next requests.
    let (body, _) = gcs
        .read(&bucket, "pool/a.bin", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body.len(), 1 << 20);
    assert_eq!(connections_to(port), 1);
}
