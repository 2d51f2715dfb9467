//! Objects above the official client's resumable-upload threshold (16 MiB) go both ways through
//! the project's storage client (`datashare::gcp::Gcs`) on the local stack (fake-gcp/stack.py).
//!
//! fake-gcs-server builds a resumable session's URL from the request's `Host` header, which
//! Google's Rust client sends without the port; the stack's front (fake-gcp/gcs_front.py) puts
//! the port back. Without it these uploads go to port 80 and never finish.
//!
//! `Gcs::write` and `Gcs::upload` hold the whole object in memory (the client's buffered
//! upload, sent resumably in chunks above 16 MiB); `Gcs::download` streams to a file and
//! `Gcs::read` collects the chunks.

use std::time::Duration;

use datashare::gcp::Gcs;
use datashare::products::manifest::sha256_hex;

use crate::worker::Stack;

/// 64 MiB: four times the resumable threshold, several of the client's upload chunks.
const SIZE: usize = 64 << 20;

/// A deterministic, incompressible-looking payload (xorshift), so a misplaced chunk shows.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_64_mib_go_up_and_down_through_the_official_client() {
    let stack = Stack::up(&[]);
    let gcs = Gcs::connect(Some(&stack.env["STORAGE_EMULATOR_HOST"]))
        .await
        .expect("storage client");
    let bucket = stack.env["DATASHARE_BUCKET_CURATED"].clone();
    let dir = tempfile::tempdir().unwrap();
    // A stalled upload retries for minutes: fail well before the test harness would.
    let limit = Duration::from_secs(180);

    // From memory (the worker's `write`).
    let data = payload(SIZE, 42);
    let want = sha256_hex(&data);
    let generation = tokio::time::timeout(
        limit,
        gcs.write(&bucket, "large/from-memory.bin", data, None),
    )
    .await
    .expect("a 64 MiB write finishes (resumable session URL reachable)")
    .expect("a 64 MiB write succeeds");
    let meta = gcs
        .stat(&bucket, "large/from-memory.bin")
        .await
        .unwrap()
        .expect("the object exists");
    assert_eq!((meta.size, meta.generation), (SIZE as u64, generation));
    let (back, read_generation) = tokio::time::timeout(
        limit,
        gcs.read(&bucket, "large/from-memory.bin", Some(generation)),
    )
    .await
    .expect("a 64 MiB read finishes")
    .unwrap()
    .expect("the generation exists");
    assert_eq!(read_generation, generation);
    assert_eq!(back.len(), SIZE);
    assert_eq!(sha256_hex(&back), want, "read back what was written");
    drop(back);

    // From a file (the worker's `upload`), and down into a file (`download`, streamed).
    let src = dir.path().join("up.bin");
    let data = payload(SIZE + 12_345, 7);
    let want = sha256_hex(&data);
    std::fs::write(&src, &data).unwrap();
    drop(data);
    let generation = tokio::time::timeout(limit, gcs.upload(&bucket, "large/from-file.bin", &src))
        .await
        .expect("a 64 MiB upload finishes")
        .expect("a 64 MiB upload succeeds");
    let dest = dir.path().join("down/copy.bin");
    let got = tokio::time::timeout(
        limit,
        gcs.download(&bucket, "large/from-file.bin", None, &dest),
    )
    .await
    .expect("a 64 MiB download finishes")
    .unwrap();
    assert_eq!(got, Some(generation));
    let back = std::fs::read(&dest).unwrap();
    assert_eq!(back.len(), SIZE + 12_345);
    assert_eq!(sha256_hex(&back), want, "downloaded what was uploaded");
}
