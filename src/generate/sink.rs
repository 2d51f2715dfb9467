//! Where generated objects go: a trait for object stores and the local-folder implementation.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// An object being written; it exists under its name only once `finish` returns.
pub trait ObjectWriter: Write {
    /// Completes the object (flushes, commits, renames into place).
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// Receives generated objects by name (relative to a bucket: `extracts/…`, `truth/…`).
///
/// Several objects may be open at once (a part and `defects.jsonl`), so `create` takes `&self`.
pub trait ObjectSink {
    /// Opens object `name` for streaming writes.
    fn create(&self, name: &str) -> io::Result<Box<dyn ObjectWriter>>;
}

/// Writes objects as files under a local folder, atomically (a temporary name, then a rename).
#[derive(Debug, Clone)]
pub struct LocalDirSink {
    root: PathBuf,
}

impl LocalDirSink {
    /// Creates a sink rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDirSink { root: root.into() }
    }

    /// Returns the local path of an object name.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

struct FileObject {
    file: BufWriter<File>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl Write for FileObject {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ObjectWriter for FileObject {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.file.flush()?;
        fs::rename(&self.tmp, &self.dest)
    }
}

/// Opens a file object that lands at `dest` when finished.
pub(crate) fn file_object(dest: &Path) -> io::Result<Box<dyn ObjectWriter>> {
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let file = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    Ok(Box::new(FileObject {
        file,
        tmp,
        dest: dest.to_path_buf(),
    }))
}

impl ObjectSink for LocalDirSink {
    fn create(&self, name: &str) -> io::Result<Box<dyn ObjectWriter>> {
        if name.split('/').any(|seg| seg == ".." || seg.is_empty()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "object name must be a relative path",
            ));
        }
        file_object(&self.path_of(name))
    }
}
