//! A tolerant CSV reader for dirty legacy exports.
//!
//! It reads gzip (by magic bytes) or plain bytes, strips a UTF-8 BOM, sniffs `,` or `;` from the
//! header, accepts LF and CRLF, and decodes each field as UTF-8 or, when that fails, Windows-1252.
//! A record with broken quoting is returned as malformed for its first line only, and reading
//! resumes at the next line, so one bad row never swallows the rest of the file.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::read::MultiGzDecoder;

use super::scan::LineScan;

/// How many physical lines one quoted record may span before it is judged broken.
const MAX_RECORD_LINES: usize = 16;
/// Bytes inspected to tell text from binary.
const SNIFF_BYTES: usize = 4096;
/// Bytes of a too-long line kept to describe it.
pub const TOO_LONG_PREFIX_BYTES: usize = 256;

/// Byte limits the reader enforces while it streams (it never buffers more than one record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Bytes of one physical line or one quoted record, without its line ending.
    pub max_record_bytes: usize,
    /// Decompressed bytes of one part.
    pub max_part_bytes: u64,
    /// Decompressed bytes per compressed byte of a gzip part.
    pub max_compression_ratio: u64,
    /// Decompressed bytes read before the ratio is checked (small files compress oddly).
    pub ratio_after_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_record_bytes: 1 << 20,
            max_part_bytes: 4 << 30,
            max_compression_ratio: 100,
            ratio_after_bytes: 64 << 20,
        }
    }
}

/// The payload of the I/O error a [`Limited`] reader returns past a limit.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TooLarge(String);

/// Counts the bytes read through it and fails past the part's limits.
struct Limited<R> {
    inner: R,
    count: Arc<AtomicU64>,
    /// The compressed bytes read so far, when this reader decompresses.
    compressed: Option<Arc<AtomicU64>>,
    limits: ReadLimits,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.count.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let what = if self.compressed.is_some() {
            "decompressed"
        } else {
            "read"
        };
        if total > self.limits.max_part_bytes {
            return Err(io::Error::other(TooLarge(format!(
                "more than {} bytes {what}",
                self.limits.max_part_bytes
            ))));
        }
        if let Some(c) = &self.compressed
            && total > self.limits.ratio_after_bytes
        {
            let packed = c.load(Ordering::Relaxed).max(1);
            if total / packed > self.limits.max_compression_ratio {
                return Err(io::Error::other(TooLarge(format!(
                    "compression ratio above {}: {total} bytes from {packed}",
                    self.limits.max_compression_ratio
                ))));
            }
        }
        Ok(n)
    }
}

/// One physical line: its number, its bytes (a prefix when too long), its length when too long.
type Line = (u64, Vec<u8>, Option<u64>);

/// A file that cannot be read as CSV at all.
#[derive(Debug, thiserror::Error)]
pub enum FileFault {
    /// The bytes cannot be decoded (corrupt gzip, UTF-16, …).
    #[error("undecodable: {0}")]
    Undecodable(String),
    /// The bytes are not CSV text (binary data, no header).
    #[error("not csv: {0}")]
    NotCsv(String),
    /// The part is past a size limit (decompressed bytes, compression ratio).
    #[error("too large: {0}")]
    TooLarge(String),
    /// Reading failed for a reason outside the file (storage, network).
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

/// The file's dialect, as found while reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    /// Field delimiter.
    pub delimiter: u8,
    /// Whether the data was gzip-compressed.
    pub gzip: bool,
    /// Whether the file started with a UTF-8 BOM.
    pub bom: bool,
}

/// One record: its starting line number and its decoded fields.
#[derive(Debug, Default)]
pub struct Record {
    /// 1-based physical line where the record starts (the header is line 1).
    pub line: u64,
    /// The line read, then the fields that had to be decoded; every field's bounds hold UTF-8.
    text: Vec<u8>,
    /// Each field's start and end in `text`.
    bounds: Vec<(usize, usize)>,
    /// True when the record's quoting is broken (an unclosed quote) or the line is too long.
    pub broken: bool,
    /// The line's length in bytes (with its ending) when past the record limit; it has no field.
    pub too_long: Option<u64>,
    prefix: String,
    /// Whether the record's line holds a NUL byte.
    nul: bool,
}

impl Record {
    /// Number of fields.
    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    /// Returns true when the record has no field.
    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// Returns field `i`.
    pub fn get(&self, i: usize) -> Option<&str> {
        let &(start, end) = self.bounds.get(i)?;
        let field = &self.text[start..end];
        debug_assert!(std::str::from_utf8(field).is_ok(), "a field is UTF-8");
        // SAFETY: `CsvReader::split_line` sets bounds only around UTF-8 bytes (checked, or decoded).
        Some(unsafe { std::str::from_utf8_unchecked(field) })
    }

    /// Iterates over the fields.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.bounds.len()).filter_map(|i| self.get(i))
    }

    /// Bytes of the record's text: its line and its decoded fields, a bound on the length of
    /// its fields.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Returns true when the record's line holds a NUL character (in a field, unless the record
    /// is broken).
    pub fn has_nul(&self) -> bool {
        self.nul
    }

    /// The first bytes of a too-long line, decoded (empty for other records).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Streams records out of raw object bytes.
pub struct CsvReader {
    input: Box<dyn BufRead + Send>,
    dialect: Dialect,
    next_line: u64,
    pushback: VecDeque<Line>,
    line_buf: Vec<u8>,
    limits: ReadLimits,
    field_buf: Vec<u8>,
    /// Where the current line's delimiters and quotes are.
    scan: LineScan,
    /// Fields of the current line to decode (see [`Self::split_line`]).
    decode: Vec<(usize, usize, usize, bool)>,
    saw_windows_1252: bool,
    header: Vec<String>,
}

impl std::fmt::Debug for CsvReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsvReader")
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

impl CsvReader {
    /// Opens raw object bytes with the default [`ReadLimits`].
    pub fn open(raw: impl Read + Send + 'static) -> Result<CsvReader, FileFault> {
        Self::open_with(raw, ReadLimits::default())
    }

    /// Opens raw object bytes: detects gzip and the BOM, reads the header and sniffs the delimiter.
    pub fn open_with(
        raw: impl Read + Send + 'static,
        limits: ReadLimits,
    ) -> Result<CsvReader, FileFault> {
        let packed = Arc::new(AtomicU64::new(0));
        let mut outer = BufReader::with_capacity(
            1 << 16,
            Limited {
                inner: raw,
                count: packed.clone(),
                compressed: None,
                limits,
            },
        );
        let gzip = outer
            .fill_buf()
            .map_err(classify_io)?
            .starts_with(&[0x1f, 0x8b]);
        let mut input: Box<dyn BufRead + Send> = if gzip {
            Box::new(BufReader::with_capacity(
                1 << 16,
                Limited {
                    inner: MultiGzDecoder::new(outer),
                    count: Arc::new(AtomicU64::new(0)),
                    compressed: Some(packed),
                    limits,
                },
            ))
        } else {
            Box::new(outer)
        };
        let head = peek(&mut input, SNIFF_BYTES).map_err(classify_io)?;
        if head.starts_with(&[0xff, 0xfe]) || head.starts_with(&[0xfe, 0xff]) {
            return Err(FileFault::Undecodable(
                "UTF-16 text is not supported".into(),
            ));
        }
        let bom = head.starts_with(&[0xef, 0xbb, 0xbf]);
        // Binary data has control bytes everywhere; a text file may have a stray one in a
        // field (that row is quarantined), never in its header.
        let header_end = memchr::memchr(b'\n', &head).unwrap_or(head.len());
        let controls = head.iter().filter(|b| is_binary_control(**b)).count();
        if head[..header_end].iter().any(|b| is_binary_control(*b))
            || (controls >= 8 && controls * 100 > head.len())
        {
            return Err(FileFault::NotCsv(
                "binary data (control bytes) where text was expected".into(),
            ));
        }
        if bom {
            input.consume(3);
        }
        let mut reader = CsvReader {
            input,
            dialect: Dialect {
                delimiter: b',',
                gzip,
                bom,
            },
            next_line: 1,
            pushback: VecDeque::new(),
            line_buf: Vec::with_capacity(1024),
            limits,
            field_buf: Vec::with_capacity(1024),
            scan: LineScan::default(),
            decode: Vec::new(),
            saw_windows_1252: false,
            header: Vec::new(),
        };
        let Some((_, first, too_long)) = reader.read_line().map_err(classify_io)? else {
            return Err(FileFault::NotCsv("empty file, no header".into()));
        };
        if let Some(n) = too_long {
            return Err(FileFault::NotCsv(format!(
                "the header line has {n} bytes, more than the limit of {}",
                limits.max_record_bytes
            )));
        }
        reader.dialect.delimiter = sniff_delimiter(&first);
        reader.pushback.push_front((1, first, None));
        let mut header = Record::default();
        if !reader.next_record(&mut header).map_err(classify_io)? || header.broken {
            return Err(FileFault::NotCsv("no readable header row".into()));
        }
        reader.header = header.iter().map(|h| h.trim().to_lowercase()).collect();
        if reader.header.len() < 2 {
            return Err(FileFault::NotCsv(
                "the header has fewer than two columns".into(),
            ));
        }
        Ok(reader)
    }

    /// The header's column names, trimmed and lower-cased.
    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The dialect found.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The file's encoding as far as read: `utf-8`, or `windows-1252` once a field needed it.
    pub fn encoding(&self) -> &'static str {
        if self.saw_windows_1252 {
            "windows-1252"
        } else {
            "utf-8"
        }
    }

    /// Reads the next record into `rec`; returns false at the end. Blank lines are skipped.
    ///
    /// A line longer than the record limit comes back broken, without fields, with
    /// [`Record::too_long`] set; a quoted record that would grow past it is broken on its first line.
    pub fn next_record(&mut self, rec: &mut Record) -> io::Result<bool> {
        loop {
            let Some((line_no, line, too_long)) = self.read_line()? else {
                return Ok(false);
            };
            rec.line = line_no;
            rec.too_long = too_long;
            rec.prefix.clear();
            if too_long.is_some() {
                rec.text.clear();
                rec.bounds.clear();
                rec.nul = false;
                rec.broken = true;
                // Its valid UTF-8 start only: a cut character must not make the file Windows-1252.
                rec.prefix.push_str(valid_run(&line));
                self.line_buf = line;
                return Ok(true);
            }
            if line.iter().all(|b| *b == b' ') {
                self.line_buf = line;
                continue;
            }
            rec.broken = false;
            let Some(mut joined) = self.split_line(line, rec, false) else {
                return Ok(true);
            };
            // An unclosed quote: the record may continue on the next lines.
            let mut extra: Vec<Line> = Vec::new();
            while extra.len() + 1 < MAX_RECORD_LINES {
                match self.read_line()? {
                    Some((n, next, None))
                        if joined.len() + 1 + next.len() <= self.limits.max_record_bytes =>
                    {
                        joined.push(b'\n');
                        joined.extend_from_slice(&next);
                        extra.push((n, next, None));
                    }
                    Some(other) => {
                        // Past the record limit: the record is broken, the line is read again.
                        extra.push(other);
                        break;
                    }
                    None => break,
                }
                match self.split_line(joined, rec, false) {
                    None => return Ok(true),
                    Some(open) => joined = open,
                }
            }
            // Broken quoting: only the first line is malformed; the others are read again.
            for item in extra.into_iter().rev() {
                self.pushback.push_front(item);
            }
            let first_len = joined
                .iter()
                .position(|b| *b == b'\n')
                .unwrap_or(joined.len());
            joined.truncate(first_len);
            self.split_line(joined, rec, true);
            rec.broken = true;
            return Ok(true);
        }
    }

    /// Returns the next physical line without its line ending; a line past the record limit
    /// is read to its end without being kept: its first bytes and its length come back.
    fn read_line(&mut self) -> io::Result<Option<Line>> {
        if let Some(item) = self.pushback.pop_front() {
            return Ok(Some(item));
        }
        self.line_buf.clear();
        if self.line_buf.capacity() == 0 {
            self.line_buf.reserve(1024);
        }
        // Room for the content and a CRLF ending.
        let room = self.limits.max_record_bytes.saturating_add(2);
        let mut total: u64 = 0;
        let mut over = false;
        loop {
            let buf = match self.input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                break;
            }
            let (used, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            total += used as u64;
            if !over {
                if self.line_buf.len() + used <= room {
                    self.line_buf.extend_from_slice(&buf[..used]);
                } else {
                    over = true;
                    let keep = TOO_LONG_PREFIX_BYTES.saturating_sub(self.line_buf.len());
                    self.line_buf.extend_from_slice(&buf[..keep.min(used)]);
                }
            }
            self.input.consume(used);
            if done {
                break;
            }
        }
        if total == 0 {
            return Ok(None);
        }
        let no = self.next_line;
        self.next_line += 1;
        if over {
            self.line_buf.truncate(TOO_LONG_PREFIX_BYTES);
            return Ok(Some((no, std::mem::take(&mut self.line_buf), Some(total))));
        }
        if self.line_buf.last() == Some(&b'\n') {
            self.line_buf.pop();
            if self.line_buf.last() == Some(&b'\r') {
                self.line_buf.pop();
            }
        }
        if self.line_buf.len() > self.limits.max_record_bytes {
            // Within the room only thanks to a missing line ending: too long all the same.
            let len = self.line_buf.len() as u64;
            self.line_buf.truncate(TOO_LONG_PREFIX_BYTES);
            return Ok(Some((no, std::mem::take(&mut self.line_buf), Some(len))));
        }
        Ok(Some((no, std::mem::take(&mut self.line_buf), None)))
    }

    /// Splits a logical line into fields; gives the line back when a quote is left open, unless
    /// `partial` (the first line of a broken record: the fields before the open quote are kept).
    ///
    /// The line becomes the record's text without a copy (the record's old buffer is read into
    /// next), and a field is a slice of it. A field is decoded at the text's end only when it
    /// must be: a quoted field with an escaped quote or text after its closing quote, or a field
    /// that is not UTF-8 (read as Windows-1252).
    fn split_line(
        &mut self,
        mut line: Vec<u8>,
        rec: &mut Record,
        partial: bool,
    ) -> Option<Vec<u8>> {
        rec.bounds.clear();
        // Fields decoded after the split: (field, its text after the opening quote or its start,
        // its end, whether it is quoted).
        self.decode.clear();
        let n = line.len();
        self.scan.scan(&line, self.dialect.delimiter);
        let scan = &self.scan;
        rec.nul = scan.nul;
        if !scan.quoted {
            let mut start = 0;
            for end in scan.delimiters().chain([n]) {
                rec.bounds.push((start, end));
                start = end + 1;
            }
        } else {
            let mut i = 0;
            loop {
                // Leading spaces before an opening quote are tolerated (and dropped).
                let j = i + line[i..].iter().take_while(|&&b| b == b' ').count();
                let end = if line.get(j) == Some(&b'"') {
                    // The closing quote: the first quote after the opening one not doubled.
                    let (mut k, mut escaped) = (j + 1, false);
                    let close = loop {
                        let Some(q) = scan.next_quote(k) else {
                            if partial {
                                break None;
                            }
                            return Some(line);
                        };
                        if line.get(q + 1) != Some(&b'"') {
                            break Some(q);
                        }
                        escaped = true;
                        k = q + 2;
                    };
                    let Some(close) = close else { break };
                    // Text after the closing quote, up to the delimiter, is kept as is.
                    let end = scan.next_delimiter(close + 1).unwrap_or(n);
                    if escaped || end != close + 1 {
                        self.decode.push((rec.bounds.len(), j + 1, end, true));
                    }
                    rec.bounds.push((j + 1, close));
                    end
                } else {
                    let end = scan.next_delimiter(i).unwrap_or(n);
                    rec.bounds.push((i, end));
                    end
                };
                if end >= n {
                    break;
                }
                i = end + 1;
            }
        }
        // An ASCII line is UTF-8. On others, a field holding a byte past ASCII is checked alone.
        if !self.scan.ascii {
            // Quoted fields already listed are checked as they are decoded.
            let (quoted, mut next) = (self.decode.len(), 0);
            for (field, &(start, end)) in rec.bounds.iter().enumerate() {
                if next < quoted && self.decode[next].0 == field {
                    next += 1;
                    continue;
                }
                if !self.scan.is_ascii(start..end)
                    && simdutf8::basic::from_utf8(&line[start..end]).is_err()
                {
                    self.decode.push((field, start, end, false));
                }
            }
        }
        for &(field, from, end, quoted) in &self.decode {
            self.field_buf.clear();
            if quoted {
                let k = unquote(&line[from..end], &mut self.field_buf)
                    .expect("the closing quote was found before");
                self.field_buf.extend_from_slice(&line[from + k..end]);
            } else {
                self.field_buf.extend_from_slice(&line[from..end]);
            }
            let start = line.len();
            self.saw_windows_1252 |= push_decoded(&mut line, &self.field_buf);
            rec.bounds[field] = (start, line.len());
        }
        let old = std::mem::replace(&mut rec.text, line);
        self.line_buf = old;
        self.line_buf.clear();
        None
    }
}

/// Copies a quoted field's text (after its opening quote) into `out`, `""` read as `"`; returns
/// the length consumed through the closing quote, or None when the quote is left open.
fn unquote(rest: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let mut k = 0;
    loop {
        let q = k + memchr::memchr(b'"', &rest[k..])?;
        out.extend_from_slice(&rest[k..q]);
        if rest.get(q + 1) == Some(&b'"') {
            out.push(b'"');
            k = q + 2;
        } else {
            return Some(q + 1);
        }
    }
}

/// The longest valid UTF-8 prefix of `bytes`, as text, checked once.
fn valid_run(bytes: &[u8]) -> &str {
    match simdutf8::compat::from_utf8(bytes) {
        Ok(text) => text,
        // SAFETY: the check found the first `valid_up_to` bytes valid (what `valid_up_to`
        // documents, as std's does); checking them again would double the cost.
        Err(e) => unsafe { std::str::from_utf8_unchecked(&bytes[..e.valid_up_to()]) },
    }
}

/// Appends a field's bytes decoded as UTF-8 or, when that fails, Windows-1252; true in that case.
fn push_decoded(text: &mut Vec<u8>, bytes: &[u8]) -> bool {
    if simdutf8::basic::from_utf8(bytes).is_ok() {
        text.extend_from_slice(bytes);
        return false;
    }
    let mut decoder = encoding_rs::WINDOWS_1252.new_decoder_without_bom_handling();
    let room = decoder
        .max_utf8_buffer_length(bytes.len())
        .expect("a field's decoded length fits in memory");
    let at = text.len();
    text.resize(at + room, 0);
    let (_, read, written) =
        decoder.decode_to_utf8_without_replacement(bytes, &mut text[at..], true);
    debug_assert_eq!(read, bytes.len(), "room was reserved for the whole field");
    text.truncate(at + written);
    true
}

fn is_binary_control(b: u8) -> bool {
    b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c)
}

fn peek(input: &mut Box<dyn BufRead + Send>, want: usize) -> io::Result<Vec<u8>> {
    let head = input.fill_buf()?;
    Ok(head[..head.len().min(want)].to_vec())
}

/// Maps a read error: a decoding error of the input (corrupt gzip) is an undecodable file, a
/// limit passed is a file too large.
pub fn classify_io(e: io::Error) -> FileFault {
    if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<TooLarge>()) {
        return FileFault::TooLarge(t.0.clone());
    }
    match e.kind() {
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
            FileFault::Undecodable(e.to_string())
        }
        _ => FileFault::Io(e),
    }
}

/// Picks `;` when the header has more semicolons than commas outside quotes, else `,`.
fn sniff_delimiter(header: &[u8]) -> u8 {
    let (mut commas, mut semis, mut quoted) = (0, 0, false);
    for &b in header {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => commas += 1,
            b';' if !quoted => semis += 1,
            _ => {}
        }
    }
    if semis > commas { b';' } else { b',' }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> (CsvReader, Vec<(u64, bool, Vec<String>)>) {
        let mut r = CsvReader::open(std::io::Cursor::new(bytes.to_vec())).unwrap();
        let mut rec = Record::default();
        let mut out = Vec::new();
        while r.next_record(&mut rec).unwrap() {
            out.push((
                rec.line,
                rec.broken,
                rec.iter().map(str::to_string).collect(),
            ));
        }
        (r, out)
    }

    #[test]
    fn reads_semicolons_crlf_bom_and_quotes() {
        let (r, rows) =
            read_all(b"\xef\xbb\xbfa;B ;c\r\n1;\"x;y\";\"say \"\"hi\"\"\"\r\n2;3;4\r\n\r\n");
        assert_eq!(r.header(), ["a", "b", "c"]);
        assert_eq!(r.dialect().delimiter, b';');
        assert!(r.dialect().bom);
        assert_eq!(
            rows[0],
            (
                2,
                false,
                vec!["1".into(), "x;y".into(), "say \"hi\"".into()]
            )
        );
        assert_eq!(rows[1].0, 3);
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn decodes_latin1_fields() {
        let (r, rows) = read_all(b"city,uf\nS\xe3o Paulo,SP\n");
        assert_eq!(rows[0].2[0], "São Paulo");
        assert_eq!(r.encoding(), "windows-1252");
    }

    #[test]
    fn a_long_line_past_ascii_splits_every_field() {
        // A byte past ASCII first, then 300k short fields: each field's check reads its own
        // bytes only (reading on to the line's end for each was quadratic).
        for first in [&b"\xc3\xa9"[..], &b"\xe9"[..]] {
            let mut bytes = b"h1,h2\n".to_vec();
            bytes.extend_from_slice(first);
            bytes.extend(b",a".repeat(300_000));
            let (_, rows) = read_all(&bytes);
            assert_eq!(rows[0].2.len(), 300_001);
            assert_eq!(rows[0].2[0], "\u{e9}");
            assert!(rows[0].2[1..].iter().all(|f| f == "a"));
        }
    }

    #[test]
    fn mixed_encodings_on_one_line_decode_field_by_field() {
        let (r, rows) = read_all(b"a,b,c,d,e\nS\xc3\xa3o,\"Bras\xedlia\",Bel\xe9m,ok,\xc3\xa9\n");
        assert_eq!(
            rows[0].2,
            ["S\u{e3}o", "Bras\u{ed}lia", "Bel\u{e9}m", "ok", "\u{e9}"]
        );
        assert_eq!(r.encoding(), "windows-1252");
    }

    #[test]
    fn quoted_fields_read_the_same_on_utf8_and_windows_1252_lines() {
        // The same cells, once on a valid UTF-8 line, once on a line a Windows-1252 byte breaks
        // (before, inside and after the quoted fields).
        let (r, rows) = read_all(
            "a,b,c,d\n\
             S\u{e3}o,\"x,\"\"y\"\"\"tail,\"\u{e9}\",\"\"\n"
                .as_bytes(),
        );
        let want = ["S\u{e3}o", "x,\"y\"tail", "\u{e9}", ""];
        assert_eq!(rows[0].2, want);
        assert_eq!(r.encoding(), "utf-8");
        for line in [
            &b"S\xe3o,\"x,\"\"y\"\"\"tail,\"\xc3\xa9\",\"\"\n"[..],
            &b"S\xc3\xa3o,\"x,\"\"y\"\"\"tail,\"\xe9\",\"\"\n"[..],
        ] {
            let (r, rows) = read_all(&[&b"a,b,c,d\n"[..], line].concat());
            assert_eq!(rows[0].2, want);
            assert_eq!(r.encoding(), "windows-1252");
        }
    }

    #[test]
    fn gzip_by_magic_bytes() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"a,b\n1,2\n").unwrap();
        let (r, rows) = read_all(&enc.finish().unwrap());
        assert!(r.dialect().gzip);
        assert_eq!(rows[0].2, ["1", "2"]);
    }

    #[test]
    fn broken_quote_is_one_malformed_line() {
        let (_, rows) = read_all(b"a,b\n\"1,2\n3,4\n5,6\n");
        assert_eq!(rows[0].0, 2);
        assert!(rows[0].1, "first line is broken");
        assert_eq!(rows[1], (3, false, vec!["3".into(), "4".into()]));
        assert_eq!(rows[2].0, 4);
    }

    #[test]
    fn quoted_newline_spans_lines() {
        let (_, rows) = read_all(b"a,b\n\"x\ny\",2\n3,4\n");
        assert_eq!(rows[0], (2, false, vec!["x\ny".into(), "2".into()]));
        assert_eq!(rows[1].0, 4);
    }

    fn read_limited(bytes: Vec<u8>, limits: ReadLimits) -> Result<Vec<Record>, FileFault> {
        let mut r = CsvReader::open_with(std::io::Cursor::new(bytes), limits)?;
        let mut out = Vec::new();
        loop {
            let mut rec = Record::default();
            if !r.next_record(&mut rec).map_err(classify_io)? {
                return Ok(out);
            }
            out.push(rec);
        }
    }

    #[test]
    fn a_line_past_the_limit_is_skipped_to_its_end() {
        let limits = ReadLimits {
            max_record_bytes: 64,
            ..ReadLimits::default()
        };
        let long = "x".repeat(10_000);
        let csv = format!(
            "a,b\n1,2\n{long},3\r\n4,5\n\"{long}\n6,7\n\"q\n{}\",8\n",
            "y".repeat(60)
        );
        let rows = read_limited(csv.into_bytes(), limits).unwrap();
        assert_eq!(rows[0].iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(rows[1].too_long, Some(10_004));
        assert!(rows[1].broken && rows[1].is_empty());
        assert_eq!(rows[1].prefix().len(), TOO_LONG_PREFIX_BYTES);
        assert_eq!((rows[2].line, rows[2].too_long), (4, None));
        assert_eq!(rows[2].iter().collect::<Vec<_>>(), ["4", "5"]);
        assert_eq!((rows[3].line, rows[3].too_long), (5, Some(10_002)));
        assert_eq!(rows[4].iter().collect::<Vec<_>>(), ["6", "7"]);
        // A quoted record that would grow past the limit is broken on its first line.
        assert_eq!(
            (rows[5].line, rows[5].broken, rows[5].too_long),
            (7, true, None)
        );
        assert_eq!(rows[6].line, 8);
        assert_eq!(rows.len(), 7);
        // The last line without an ending counts the same.
        let rows = read_limited(format!("a,b\n{}", "z".repeat(65)).into_bytes(), limits).unwrap();
        assert_eq!(rows[0].too_long, Some(65));
        let header = format!("{},b\n1,2\n", "h".repeat(100));
        assert!(matches!(
            read_limited(header.into_bytes(), limits),
            Err(FileFault::NotCsv(_))
        ));
    }

    #[test]
    fn parts_past_the_size_or_ratio_limits_are_too_large() {
        use std::io::Write;
        let mut body = b"a,b\n".to_vec();
        for i in 0..20_000 {
            body.extend_from_slice(format!("{i},same same same same same same\n").as_bytes());
        }
        let small = ReadLimits {
            max_part_bytes: 100_000,
            ..ReadLimits::default()
        };
        assert!(matches!(
            read_limited(body.clone(), small),
            Err(FileFault::TooLarge(_))
        ));
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&body).unwrap();
        enc.write_all(&vec![b'a'; 4 << 20]).unwrap();
        let gz = enc.finish().unwrap();
        let ratio = ReadLimits {
            max_compression_ratio: 50,
            ratio_after_bytes: 1 << 20,
            ..ReadLimits::default()
        };
        assert!(matches!(
            read_limited(gz.clone(), ratio),
            Err(FileFault::TooLarge(_))
        ));
        assert!(read_limited(gz, ReadLimits::default()).is_ok());
    }

    #[test]
    fn rejects_binary_and_utf16_and_corrupt_gzip() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert!(matches!(
            CsvReader::open(std::io::Cursor::new(png.to_vec())),
            Err(FileFault::NotCsv(_))
        ));
        let utf16 = b"\xff\xfea\0,\0b\0";
        assert!(matches!(
            CsvReader::open(std::io::Cursor::new(utf16.to_vec())),
            Err(FileFault::Undecodable(_))
        ));
        let corrupt = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage".to_vec();
        assert!(matches!(
            CsvReader::open(std::io::Cursor::new(corrupt)),
            Err(FileFault::Undecodable(_))
        ));
        assert!(matches!(
            CsvReader::open(std::io::Cursor::new(b"just one column\n".to_vec())),
            Err(FileFault::NotCsv(_))
        ));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ReadLimits {
        ReadLimits {
            max_record_bytes: 64,
            max_part_bytes: 1 << 20,
            max_compression_ratio: 100,
            ratio_after_bytes: 1 << 16,
        }
    }

    /// Reads every record; the reader must end, and no record may hold more than the limit.
    fn drain(bytes: Vec<u8>, limits: ReadLimits) -> Result<Vec<(bool, Vec<String>)>, FileFault> {
        let mut r = CsvReader::open_with(std::io::Cursor::new(bytes), limits)?;
        let mut rec = Record::default();
        let mut out = Vec::new();
        while r.next_record(&mut rec).map_err(classify_io)? {
            if rec.too_long.is_some() {
                assert!(rec.is_empty() && rec.broken);
                assert!(rec.prefix().len() <= 3 * TOO_LONG_PREFIX_BYTES);
            } else {
                // The line, then its decoded fields: Windows-1252 bytes decode to at most three
                // UTF-8 bytes each.
                assert!(
                    rec.text.len() <= 4 * limits.max_record_bytes,
                    "{}",
                    rec.text.len()
                );
            }
            out.push((rec.broken, rec.iter().map(str::to_string).collect()));
        }
        Ok(out)
    }

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9 ]{0,8}",
            "[a-z\",;\\n ]{0,8}",
            Just("São".to_string()),
            Just(String::new()),
        ]
    }

    fn quote(f: &str) -> String {
        if f.contains(['"', ',', '\n']) || f.starts_with(' ') {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f.to_string()
        }
    }

    /// One line split by the rules as written, field by field: the reference for the reader's
    /// in-place split. Returns whether the quoting is broken, and the fields before that point.
    fn split_by_the_rules(line: &[u8]) -> (bool, Vec<String>) {
        let decode = |b: &[u8]| match std::str::from_utf8(b) {
            Ok(s) => s.to_string(),
            Err(_) => encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(b)
                .0
                .into_owned(),
        };
        let end_of = |from: usize| {
            line[from..]
                .iter()
                .position(|&b| b == b',')
                .map_or(line.len(), |p| from + p)
        };
        let (mut fields, mut i) = (Vec::new(), 0);
        loop {
            let j = i + line[i..].iter().take_while(|&&b| b == b' ').count();
            let end = if line.get(j) == Some(&b'"') {
                let (mut text, mut k) = (Vec::new(), j + 1);
                loop {
                    let Some(p) = line[k..].iter().position(|&b| b == b'"') else {
                        return (true, fields);
                    };
                    text.extend_from_slice(&line[k..k + p]);
                    if line.get(k + p + 1) == Some(&b'"') {
                        text.push(b'"');
                        k += p + 2;
                    } else {
                        k += p + 1;
                        break;
                    }
                }
                let end = end_of(k);
                text.extend_from_slice(&line[k..end]);
                fields.push(decode(&text));
                end
            } else {
                let end = end_of(i);
                fields.push(decode(&line[i..end]));
                end
            };
            if end >= line.len() {
                return (false, fields);
            }
            i = end + 1;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_bytes_read_to_the_end_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = drain(bytes.clone(), small());
            let _ = drain(bytes, ReadLimits::default());
        }

        #[test]
        fn text_like_bytes_read_to_the_end_without_panic(text in "[a-c,;\"\\r\\n\u{0} é]{0,400}") {
            let _ = drain(format!("h1,h2\n{text}").into_bytes(), small());
        }

        #[test]
        fn a_line_splits_as_the_rules_say(pieces in prop::collection::vec(
            prop::sample::select(vec!["a", "bc", ",", "\"", "\"\"", " ", "\u{e9}", "\u{fffd}"]), 1..40),
            latin1 in prop::collection::vec(any::<bool>(), 40)) {
            // Some pieces in UTF-8, some in Windows-1252 (where they differ): mixed lines.
            let mut line = Vec::new();
            for (p, l) in pieces.iter().zip(&latin1) {
                match (*p, l) {
                    ("\u{e9}", true) => line.push(0xe9),
                    ("\u{fffd}", true) => line.extend_from_slice(&[0xc3, 0x28]),
                    _ => line.extend_from_slice(p.as_bytes()),
                }
            }
            prop_assume!(line.iter().any(|&b| b != b' '));
            let mut bytes = b"h1,h2\n".to_vec();
            bytes.extend_from_slice(&line);
            let got = drain(bytes, ReadLimits::default()).unwrap();
            prop_assert_eq!(got.len(), 1);
            prop_assert_eq!(&got[0], &split_by_the_rules(&line));
        }

        #[test]
        fn quoted_records_read_back_as_written(rows in prop::collection::vec(prop::collection::vec(field(), 3), 1..20)) {
            let mut csv = String::from("a,b,c\n");
            for r in &rows {
                csv.push_str(&r.iter().map(|f| quote(f)).collect::<Vec<_>>().join(","));
                csv.push('\n');
            }
            let want: Vec<(bool, Vec<String>)> = rows
                .into_iter()
                // A row of one blank field is a blank line: skipped.
                .filter(|r| !(r.iter().all(|f| f.chars().all(|c| c == ' ')) && r.len() == 1))
                .map(|r| (false, r))
                .collect();
            // The same records written in Windows-1252 read back the same.
            let (windows_1252, _, unmappable) = encoding_rs::WINDOWS_1252.encode(&csv);
            prop_assert!(!unmappable);
            let windows_1252 = windows_1252.into_owned();
            for bytes in [csv.into_bytes(), windows_1252] {
                let got = drain(bytes, ReadLimits::default()).unwrap();
                prop_assert_eq!(&got, &want);
            }
        }
    }
}
