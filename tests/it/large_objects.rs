//! Objects above the official client's resumable-upload threshold (16 MiB) go both ways through
//! the project's storage client (`datashare::gcp::Gcs`) on the local stack (fake-gcp/stack.py).
//!
//! fake-gcs-server builds a resumable session's URL from the request's `Host` header, which
//! Google's Rust client sends without the port; the stack's front (fake-gcp/gcs_front.py) puts
//! the port back. Without it these uploads go to port 80 and never finish.
//!
//! `Gcs::write` holds the whole object in memory (the client's buffered upload, sent resumably
//! in chunks above 16 MiB) and `Gcs::read` collects the chunks: both are for small objects.
//! `Gcs::upload` streams from the file and `Gcs::download` streams to a file: a 200 MiB file
//! goes up and down with the process's peak memory growing by a few MiB (measured in a child
//! process, so that no other test's allocations count).

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use datashare::gcp::Gcs;
use datashare::products::manifest::sha256_hex;
use sha2::{Digest, Sha256};

use crate::harness::Stack;

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

    // Copied inside the service (`copy`, the tables' copy of a product), to another bucket.
    let other = stack.env["DATASHARE_BUCKET_PRODUCTS"].clone();
    let copied = tokio::time::timeout(
        limit,
        gcs.copy((&bucket, "large/from-file.bin"), (&other, "large/copy.bin")),
    )
    .await
    .expect("a 64 MiB copy finishes")
    .unwrap()
    .expect("the source exists");
    let meta = gcs.stat(&other, "large/copy.bin").await.unwrap().unwrap();
    assert_eq!(
        (meta.size, meta.generation),
        ((SIZE + 12_345) as u64, copied)
    );
    let (back, _) = gcs
        .read(&other, "large/copy.bin", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sha256_hex(&back), want, "the copy holds the source's bytes");
    let missing = gcs
        .copy((&bucket, "large/no-such.bin"), (&other, "large/copy-2.bin"))
        .await
        .unwrap();
    assert_eq!(missing, None, "a missing source is not an error");
    assert!(
        gcs.stat(&other, "large/copy-2.bin")
            .await
            .unwrap()
            .is_none()
    );
}

/// 200 MiB: far more than an upload or a download may hold in memory.
const BIG: usize = 200 << 20;
/// Set in the child process: `<emulator host> <bucket>`.
const CHILD: &str = "DATASHARE_TEST_STREAMING_CHILD";
const TEST: &str = "large_objects::a_200_mib_file_goes_up_and_down_in_bounded_memory";

/// This process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib * 1024
}

/// SHA-256 hex of a file, read in 1 MiB pieces.
fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The parent starts the stack and runs this same test alone in a fresh process of the test
/// binary (peak memory is per process, and other tests run in parallel in this one); the child
/// uploads and downloads a 200 MiB file and fails if its peak memory grew by 48 MiB or more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_file_goes_up_and_down_in_bounded_memory() {
    if let Ok(spec) = std::env::var(CHILD) {
        let (host, bucket) = spec.split_once(' ').expect("host and bucket");
        return upload_and_download_big_file(host, bucket).await;
    }
    let stack = Stack::up(&[]);
    let spec = format!(
        "{} {}",
        stack.env["STORAGE_EMULATOR_HOST"], stack.env["DATASHARE_BUCKET_CURATED"]
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(std::env::current_exe().unwrap())
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, spec)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child failed:\n{stdout}\n{stderr}"
    );
    let line = stdout
        .lines()
        .chain(stderr.lines())
        .find_map(|l| l.find("peak memory").map(|at| &l[at..]))
        .expect("the child prints its figures");
    println!("{line}");
}

async fn upload_and_download_big_file(host: &str, bucket: &str) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let mut written = 0;
        let mut seed = 1;
        while written < BIG {
            let piece = payload((1 << 20).min(BIG - written), seed);
            f.write_all(&piece).unwrap();
            written += piece.len();
            seed += 1;
        }
        f.flush().unwrap();
    }
    let want = sha256_file(&src);
    let gcs = Gcs::connect(Some(host)).await.expect("storage client");
    // Warm up the client (connections, TLS-free HTTP, the runtime's threads) with a small file.
    let small = dir.path().join("small.bin");
    std::fs::write(&small, payload(100_000, 3)).unwrap();
    gcs.upload(bucket, "large/warm-up.bin", &small)
        .await
        .unwrap();
    let before = peak_rss();

    let limit = Duration::from_secs(300);
    let generation = tokio::time::timeout(limit, gcs.upload(bucket, "large/big.bin", &src))
        .await
        .expect("a 200 MiB upload finishes")
        .expect("a 200 MiB upload succeeds");
    let after_upload = peak_rss();
    let dest = dir.path().join("down/big.bin");
    let got = tokio::time::timeout(limit, gcs.download(bucket, "large/big.bin", None, &dest))
        .await
        .expect("a 200 MiB download finishes")
        .unwrap();
    let after_download = peak_rss();
    assert_eq!(got, Some(generation));
    assert_eq!(sha256_file(&dest), want, "downloaded what was uploaded");

    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    println!(
        "peak memory (VmHWM) {:.1} MiB before; +{:.1} MiB after uploading {} MiB, +{:.1} MiB after downloading it",
        mib(before),
        mib(after_upload - before),
        BIG >> 20,
        mib(after_download - before),
    );
    assert!(
        after_download - before < 48 << 20,
        "peak memory grew by {:.1} MiB for a {} MiB file",
        mib(after_download - before),
        BIG >> 20
    );
}

/// A day large enough that its staged files, its curated Parquet and the partner's daily CSV
/// each pass the resumable threshold goes through every role to the partner's e-mail, the SFTP
/// and API copies of the CSV equal to what was built (not timed: `scripts/bench-e2e.sh` measures).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_day_whose_files_pass_16_mib_is_delivered() {
    use crate::harness::{Partners, Spec, TestApp, mails, until, upload_day};
    const THRESHOLD: u64 = 16 << 20;
    let r = TestApp::spawn(Spec::new().partners(Partners::StandIns)).await;
    r.spawn_worker().await;
    for sink in ["sftp", "api", "email"] {
        r.spawn_deliver(sink).await;
    }
    let dt = chrono::NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    // 850k rows: since staged files are zstd, 700k rows gave a largest staged part of 15.5 MB.
    upload_day(&r.gcs, &r.cfg, dt, 850_000, false).await;
    let mail_dir = r.mail_dir();
    until("the partner e-mail", Duration::from_secs(1500), || {
        let n = mails(&mail_dir).len();
        async move { (n > 0).then_some(()) }
    })
    .await;

    let b = &r.cfg.gcp.buckets;
    let largest = |objects: Vec<datashare::gcp::ObjectMeta>, suffix: &str| {
        objects
            .into_iter()
            .filter(|o| o.name.ends_with(suffix))
            .map(|o| (o.size, o.name))
            .max()
            .unwrap_or_default()
    };
    let staged = largest(
        r.gcs
            .list(&b.curated, &format!("staging/dt={dt}/transactions/"))
            .await
            .unwrap(),
        ".arrow",
    );
    let curated = largest(
        r.gcs
            .list(&b.curated, &format!("curated/transactions/dt={dt}/"))
            .await
            .unwrap(),
        ".parquet",
    );
    let csv = largest(
        r.gcs.list(&b.products, "ouchhungry/daily/").await.unwrap(),
        ".csv",
    );
    for (what, (size, name)) in [("staged", &staged), ("curated", &curated), ("csv", &csv)] {
        assert!(*size > THRESHOLD, "{what}: largest {name} is {size} bytes");
    }
    let name = csv.1.rsplit('/').next().unwrap();
    let at_sftp = std::fs::read(r.upload_dir().join("ouchhungry/daily").join(name))
        .expect("the CSV on the SFTP server");
    let (built, _) = r
        .gcs
        .read(&b.products, &csv.1, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        sha256_hex(&at_sftp),
        sha256_hex(&built),
        "SFTP holds the CSV built"
    );
    // The API stand-in keeps each accepted POST's files under received/<Idempotency-Key>/.
    let received = r.api().state.join("received");
    let at_api = crate::harness::tree(&received)
        .into_iter()
        .filter_map(|line| line.split(' ').next().map(|p| received.join(p)))
        .find(|p| p.file_name().is_some_and(|f| f.to_string_lossy() == name))
        .expect("the CSV at the API");
    assert_eq!(
        sha256_hex(&std::fs::read(at_api).unwrap()),
        sha256_hex(&built),
        "the API holds the CSV built"
    );
}
