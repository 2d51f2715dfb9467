//! Cloud Storage: reads and conditional writes with the official data-plane client; object
//! metadata and listing with the JSON API over `reqwest`, because the official control client
//! speaks gRPC, which fake-gcs-server does not.
//!
//! Conditional writes (`if_generation_match`) of small objects go out as multipart uploads,
//! the only kind on which fake-gcs-server honours preconditions; claims are small.

use std::path::Path;

use bytes::Bytes;
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use google_cloud_storage::client::Storage;
use google_cloud_storage::read_object::ReadObjectResponse;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{ClientError, is_transient, retryable_status};

/// How much of a download is gathered before one write to the local file.
const WRITE_CHUNK: usize = 1 << 20;

/// The public Cloud Storage JSON API.
const JSON_API: &str = "https://storage.googleapis.com";

/// A Cloud Storage operation failed.
#[derive(Debug, thiserror::Error)]
#[error("gcs {op} gs://{bucket}/{name}: {message}")]
pub struct GcsError {
    /// The operation (`read`, `write`, `stat`, `list`).
    pub op: &'static str,
    /// The bucket.
    pub bucket: String,
    /// The object name (or prefix).
    pub name: String,
    /// HTTP status, when the service answered.
    pub status: Option<u16>,
    /// Worth retrying.
    pub transient: bool,
    /// One line.
    pub message: String,
}

impl GcsError {
    /// A generation precondition failed (HTTP 412).
    pub fn is_precondition_failed(&self) -> bool {
        self.status == Some(412)
    }

    /// The object does not exist (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }
}

/// An object's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Object name.
    pub name: String,
    /// Generation.
    pub generation: i64,
    /// Size in bytes.
    pub size: u64,
}

#[derive(Deserialize)]
struct JsonObject {
    name: String,
    generation: String,
    #[serde(default)]
    size: Option<String>,
}

impl JsonObject {
    fn meta(self) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            generation: self.generation.parse().ok()?,
            size: self.size.and_then(|s| s.parse().ok()).unwrap_or(0),
            name: self.name,
        })
    }
}

/// The answer to a `rewriteTo` call.
#[derive(Deserialize)]
struct JsonRewrite {
    #[serde(default)]
    done: bool,
    #[serde(default, rename = "rewriteToken")]
    rewrite_token: Option<String>,
    #[serde(default)]
    resource: Option<JsonObject>,
}

#[derive(Deserialize)]
struct JsonList {
    #[serde(default)]
    items: Vec<JsonObject>,
    #[serde(default, rename = "nextPageToken")]
    next_page_token: Option<String>,
}

/// A Cloud Storage client for the worker's buckets.
#[derive(Clone, Debug)]
pub struct Gcs {
    client: Storage,
    http: reqwest::Client,
    json_base: String,
    credentials: Option<Credentials>,
}

impl Gcs {
    /// Connects to Cloud Storage, or to the emulator at `emulator` (anonymous).
    pub async fn connect(emulator: Option<&str>) -> Result<Gcs, ClientError> {
        let creds = super::credentials(emulator.is_some())?;
        let mut b = Storage::builder().with_credentials(creds.clone());
        if let Some(e) = emulator {
            b = b.with_endpoint(e);
        }
        let client = b.build().await.map_err(|e| ClientError::Build {
            client: "storage",
            message: e.to_string(),
        })?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::Build {
                client: "storage json",
                message: e.to_string(),
            })?;
        Ok(Gcs {
            client,
            http,
            json_base: emulator.unwrap_or(JSON_API).to_string(),
            credentials: emulator.is_none().then_some(creds),
        })
    }

    fn err(
        op: &'static str,
        bucket: &str,
        name: &str,
        e: &google_cloud_gax::error::Error,
    ) -> GcsError {
        let status = e.http_status_code().or_else(|| {
            e.status().and_then(|s| {
                use google_cloud_gax::error::rpc::Code;
                match s.code {
                    Code::NotFound => Some(404),
                    Code::FailedPrecondition => Some(412),
                    _ => None,
                }
            })
        });
        GcsError {
            op,
            bucket: bucket.to_string(),
            name: name.to_string(),
            status,
            transient: is_transient(e),
            message: e.to_string().lines().next().unwrap_or_default().to_string(),
        }
    }

    /// Starts reading an object (generation); `None` when it does not exist.
    async fn open(
        &self,
        bucket: &str,
        name: &str,
        generation: Option<i64>,
    ) -> Result<Option<ReadObjectResponse>, GcsError> {
        let mut req = self
            .client
            .read_object(format!("projects/_/buckets/{bucket}"), name);
        if let Some(g) = generation {
            req = req.set_generation(g);
        }
        match req.send().await {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                let e = Self::err("read", bucket, name, &e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// Reads a whole (small) object; `None` when it (or that generation) does not exist.
    pub async fn read(
        &self,
        bucket: &str,
        name: &str,
        generation: Option<i64>,
    ) -> Result<Option<(Vec<u8>, i64)>, GcsError> {
        let Some(mut resp) = self.open(bucket, name, generation).await? else {
            return Ok(None);
        };
        let gen_read = resp.object().generation;
        let mut data = Vec::new();
        while let Some(chunk) = resp.next().await {
            let chunk = chunk.map_err(|e| Self::err("read", bucket, name, &e))?;
            data.extend_from_slice(&chunk);
        }
        Ok(Some((data, gen_read)))
    }

    /// Opens an object as a blocking reader for work on a blocking thread (each read waits for
    /// the next piece of the stream on `rt`: one piece in memory); `None` when it does not exist.
    pub async fn blocking_reader(
        &self,
        rt: tokio::runtime::Handle,
        bucket: &str,
        name: &str,
    ) -> Result<Option<BlockingReader>, GcsError> {
        let Some(resp) = self.open(bucket, name, None).await? else {
            return Ok(None);
        };
        Ok(Some(BlockingReader {
            rt,
            resp,
            piece: Bytes::new(),
            what: format!("gs://{bucket}/{name}"),
        }))
    }

    /// Streams an object generation into a local file; `None` when it does not exist.
    pub async fn download(
        &self,
        bucket: &str,
        name: &str,
        generation: Option<i64>,
        dest: &Path,
    ) -> Result<Option<i64>, GcsError> {
        self.download_with(bucket, name, generation, dest, |_| {})
            .await
    }

    /// [`Gcs::download`] that also hands every piece, in order, to `each` as it arrives (to
    /// hash the object while it downloads, say).
    pub async fn download_with(
        &self,
        bucket: &str,
        name: &str,
        generation: Option<i64>,
        dest: &Path,
        mut each: impl FnMut(&[u8]),
    ) -> Result<Option<i64>, GcsError> {
        let io = |e: std::io::Error| GcsError {
            op: "download",
            bucket: bucket.to_string(),
            name: name.to_string(),
            status: None,
            transient: true,
            message: format!("{}: {e}", dest.display()),
        };
        let Some(mut resp) = self.open(bucket, name, generation).await? else {
            return Ok(None);
        };
        let gen_read = resp.object().generation;
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io)?;
        }
        // Written 1 MiB at a time: each write of a `tokio::fs::File` is a hop to a blocking
        // thread, and the stream's pieces can be a few KiB.
        let file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut file = tokio::io::BufWriter::with_capacity(WRITE_CHUNK, file);
        while let Some(chunk) = resp.next().await {
            let chunk = chunk.map_err(|e| Self::err("read", bucket, name, &e))?;
            each(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok(Some(gen_read))
    }

    /// Writes an object from memory (meant for small bodies: claims, receipts, records; a file
    /// goes up with [`Gcs::upload_file`]), only if its live generation is `if_generation_match`
    /// when given (0: only if it does not exist); returns the new generation.
    pub async fn write(
        &self,
        bucket: &str,
        name: &str,
        data: impl Into<Bytes>,
        if_generation_match: Option<i64>,
    ) -> Result<i64, GcsError> {
        let data: Bytes = data.into();
        let mut w = self
            .client
            .write_object(format!("projects/_/buckets/{bucket}"), name, data);
        if let Some(g) = if_generation_match {
            w = w.set_if_generation_match(g);
        }
        let obj = w
            .send_buffered()
            .await
            .map_err(|e| Self::err("write", bucket, name, &e))?;
        Ok(obj.generation)
    }

    /// Uploads a local file (unconditionally), streamed from the file; returns the new generation.
    pub async fn upload(&self, bucket: &str, name: &str, src: &Path) -> Result<i64, GcsError> {
        self.upload_file(bucket, name, src, None).await
    }

    /// Uploads a local file only if its live generation is `if_generation_match` when given (0:
    /// only if the object does not exist), streamed: the file's CRC32C is computed first (one
    /// pass, 1 MiB at a time), then the client reads the file in 256 KiB pieces (a single-shot
    /// upload under 16 MiB, a resumable one above that rewinds the file to resume), so memory
    /// stays flat whatever the file's size. Returns the new generation.
    ///
    /// The known CRC32C goes in the upload's metadata: the service refuses a corrupted upload,
    /// and the single-shot upload has no trailing checksum part (which fake-gcs-server misreads).
    pub async fn upload_file(
        &self,
        bucket: &str,
        name: &str,
        src: &Path,
        if_generation_match: Option<i64>,
    ) -> Result<i64, GcsError> {
        let io = |e: std::io::Error| GcsError {
            op: "upload",
            bucket: bucket.to_string(),
            name: name.to_string(),
            status: None,
            transient: true,
            message: format!("{}: {e}", src.display()),
        };
        let path = src.to_path_buf();
        let crc = tokio::task::spawn_blocking(move || file_crc32c(&path))
            .await
            .map_err(|e| io(std::io::Error::other(e)))?
            .map_err(io)?;
        let file = tokio::fs::File::open(src).await.map_err(io)?;
        let mut w = self
            .client
            .write_object(format!("projects/_/buckets/{bucket}"), name, file)
            .with_known_crc32c(crc);
        if let Some(g) = if_generation_match {
            w = w.set_if_generation_match(g);
        }
        let obj = w
            .send_unbuffered()
            .await
            .map_err(|e| Self::err("upload", bucket, name, &e))?;
        Ok(obj.generation)
    }

    async fn json_get(
        &self,
        op: &'static str,
        bucket: &str,
        name: &str,
        url: &str,
    ) -> Result<Option<Vec<u8>>, GcsError> {
        self.json_send(op, bucket, name, self.http.get(url)).await
    }

    /// Sends a JSON API request (with the credentials' headers); the body of a 2xx answer,
    /// `None` for a 404.
    async fn json_send(
        &self,
        op: &'static str,
        bucket: &str,
        name: &str,
        mut req: reqwest::RequestBuilder,
    ) -> Result<Option<Vec<u8>>, GcsError> {
        let fail = |status: Option<u16>, transient: bool, message: String| GcsError {
            op,
            bucket: bucket.to_string(),
            name: name.to_string(),
            status,
            transient,
            message,
        };
        if let Some(c) = &self.credentials {
            let headers = c
                .headers(http::Extensions::new())
                .await
                .map_err(|e| fail(None, true, format!("credentials: {e}")))?;
            if let CacheableResource::New { data, .. } = headers {
                req = req.headers(data);
            }
        }
        let resp = req
            .send()
            .await
            .map_err(|e| fail(None, true, e.to_string()))?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| fail(Some(status), true, e.to_string()))?;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&body);
            return Err(fail(
                Some(status),
                retryable_status(status) || status == 401 || status == 403,
                format!("http {status}: {}", text.lines().next().unwrap_or_default()),
            ));
        }
        Ok(Some(body.to_vec()))
    }

    /// The live generation and size of an object; `None` when it does not exist.
    pub async fn stat(&self, bucket: &str, name: &str) -> Result<Option<ObjectMeta>, GcsError> {
        let url = format!(
            "{}/storage/v1/b/{}/o/{}?fields=name,generation,size",
            self.json_base,
            encode(bucket),
            encode(name)
        );
        let Some(body) = self.json_get("stat", bucket, name, &url).await? else {
            return Ok(None);
        };
        let o: JsonObject = serde_json::from_slice(&body).map_err(|e| GcsError {
            op: "stat",
            bucket: bucket.to_string(),
            name: name.to_string(),
            status: None,
            transient: true,
            message: format!("unreadable object resource: {e}"),
        })?;
        Ok(o.meta())
    }

    /// Copies the live version of an object to `dest` inside the service (the JSON API's
    /// `rewriteTo`: no byte passes through this process); returns the copy's generation, or
    /// `None` when the source does not exist. A large copy between locations may take several
    /// calls: each answer's token continues it.
    pub async fn copy(
        &self,
        (bucket, name): (&str, &str),
        (dest_bucket, dest): (&str, &str),
    ) -> Result<Option<i64>, GcsError> {
        let url = format!(
            "{}/storage/v1/b/{}/o/{}/rewriteTo/b/{}/o/{}",
            self.json_base,
            encode(bucket),
            encode(name),
            encode(dest_bucket),
            encode(dest)
        );
        let unreadable = |message: String| GcsError {
            op: "copy",
            bucket: bucket.to_string(),
            name: name.to_string(),
            status: None,
            transient: true,
            message,
        };
        let mut token: Option<String> = None;
        loop {
            let mut req = self
                .http
                .post(&url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body("{}");
            if let Some(t) = &token {
                req = req.query(&[("rewriteToken", t)]);
            }
            let Some(body) = self.json_send("copy", bucket, name, req).await? else {
                return Ok(None);
            };
            let r: JsonRewrite = serde_json::from_slice(&body)
                .map_err(|e| unreadable(format!("unreadable rewrite answer: {e}")))?;
            if r.done {
                let meta = r.resource.and_then(JsonObject::meta);
                let meta =
                    meta.ok_or_else(|| unreadable("rewrite done without its object".into()))?;
                return Ok(Some(meta.generation));
            }
            match r.rewrite_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Err(unreadable("rewrite not done and no token".into())),
            }
        }
    }

    /// Every live object whose name starts with `prefix`, in name order.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, GcsError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/storage/v1/b/{}/o?prefix={}&fields=items(name,generation,size),nextPageToken",
                self.json_base,
                encode(bucket),
                encode(prefix)
            );
            if let Some(t) = &token {
                url.push_str(&format!("&pageToken={}", encode(t)));
            }
            let body = self
                .json_get("list", bucket, prefix, &url)
                .await?
                .unwrap_or_default();
            let page: JsonList = if body.is_empty() {
                JsonList {
                    items: Vec::new(),
                    next_page_token: None,
                }
            } else {
                serde_json::from_slice(&body).map_err(|e| GcsError {
                    op: "list",
                    bucket: bucket.to_string(),
                    name: prefix.to_string(),
                    status: None,
                    transient: true,
                    message: format!("unreadable listing: {e}"),
                })?
            };
            out.extend(page.items.into_iter().filter_map(JsonObject::meta));
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// The CRC32C (Castagnoli) of a file's content, read 1 MiB at a time.
fn file_crc32c(path: &Path) -> std::io::Result<u32> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = 0;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(crc),
            Ok(n) => crc = crc32c::crc32c_append(crc, &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved characters kept).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An object read as a `std::io::Read` from a blocking thread ([`Gcs::blocking_reader`]).
pub struct BlockingReader {
    rt: tokio::runtime::Handle,
    resp: ReadObjectResponse,
    piece: Bytes,
    what: String,
}

impl std::fmt::Debug for BlockingReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingReader")
            .field("object", &self.what)
            .finish()
    }
}

impl std::io::Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.piece.is_empty() {
            match self.rt.block_on(self.resp.next()) {
                None => return Ok(0),
                Some(Ok(piece)) => self.piece = piece,
                Some(Err(e)) => {
                    return Err(std::io::Error::other(format!("{}: {e}", self.what)));
                }
            }
        }
        let n = buf.len().min(self.piece.len());
        buf[..n].copy_from_slice(&self.piece.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_of_a_file_matches_the_whole_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        assert_eq!(file_crc32c(&path).unwrap(), crc32c::crc32c(&data));
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn encodes_object_names() {
        assert_eq!(
            encode("extracts/dt=2026-11-27/_SUCCESS"),
            "extracts%2Fdt%3D2026-11-27%2F_SUCCESS"
        );
        assert_eq!(encode("a b@1"), "a%20b%401");
    }
}
