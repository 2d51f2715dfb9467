//! Writes one part: header and rows in a file's dialect (delimiter, quoting, line ends, BOM,
//! encoding, gzip), streaming through a bounded buffer.

use std::io::{self, Write};

use flate2::Compression;
use flate2::write::GzEncoder;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use super::sink::ObjectWriter;
use super::values::title;

/// Bytes buffered before they are handed to the object writer.
const FLUSH_AT: usize = 256 * 1024;

/// Unknown columns some exporters add.
pub(crate) const EXTRA_COLUMNS: [&str; 2] = ["loja_id", "canal"];

/// The file-level quirks of one part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Dialect {
    /// Windows-1252 instead of UTF-8.
    pub latin1: bool,
    /// UTF-8 byte-order mark.
    pub bom: bool,
    /// `;` instead of `,`.
    pub semicolon: bool,
    /// CRLF line ends.
    pub crlf: bool,
    /// Unknown extra columns.
    pub extra_columns: bool,
    /// Columns in another order.
    pub shuffled: bool,
    /// Header names in odd case and with spaces.
    pub odd_header: bool,
    /// Some plain fields quoted.
    pub quote_some: bool,
    /// Gzip-compressed.
    pub gzip: bool,
}

impl Dialect {
    /// Chooses the quirks of part `part` of `parts` of table number `table`, so that every quirk
    /// occurs over the parts of a day (a Latin-1 file never has a BOM).
    pub(crate) fn for_part(
        table: usize,
        part: usize,
        parts: usize,
        defects: bool,
        gzip: bool,
    ) -> Self {
        let mut d = Dialect {
            gzip,
            ..Dialect::default()
        };
        if !defects {
            return d;
        }
        let flags: [&mut bool; 8] = [
            &mut d.latin1,
            &mut d.bom,
            &mut d.semicolon,
            &mut d.crlf,
            &mut d.extra_columns,
            &mut d.shuffled,
            &mut d.odd_header,
            &mut d.quote_some,
        ];
        for (f, flag) in flags.into_iter().enumerate() {
            *flag = (f + table) % parts.max(1) == part;
        }
        if d.latin1 && d.bom {
            if table.is_multiple_of(2) {
                d.bom = false;
            } else {
                d.latin1 = false;
            }
        }
        d
    }
}

/// Where a written column comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A declared column, by index.
    Declared(usize),
    /// An unknown extra column, by index into `EXTRA_COLUMNS`.
    Extra(usize),
}

enum Out {
    Plain(Box<dyn ObjectWriter>),
    Gz(Box<GzEncoder<Box<dyn ObjectWriter>>>),
}

impl Out {
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Out::Plain(w) => w.write_all(b),
            Out::Gz(w) => w.write_all(b),
        }
    }

    fn finish(self) -> io::Result<()> {
        match self {
            Out::Plain(w) => w.finish(),
            Out::Gz(g) => g.finish()?.finish(),
        }
    }
}

/// Streams one part's records into an object.
pub(crate) struct PartWriter {
    out: Out,
    dialect: Dialect,
    order: Vec<Source>,
    buf: Vec<u8>,
    line: String,
    rng: ChaCha8Rng,
    /// Data records written so far.
    pub rows: u64,
    /// Whether any non-ASCII text was written.
    pub non_ascii: bool,
}

impl PartWriter {
    /// Opens a part with a column order and writes its header; returns the writer and the header cells.
    pub(crate) fn new(
        w: Box<dyn ObjectWriter>,
        dialect: Dialect,
        declared: &[&str],
        mut rng: ChaCha8Rng,
    ) -> io::Result<(Self, Vec<Source>, Vec<String>)> {
        let mut order: Vec<Source> = (0..declared.len()).map(Source::Declared).collect();
        if dialect.shuffled {
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
        }
        if dialect.extra_columns {
            for e in 0..EXTRA_COLUMNS.len() {
                let at = rng.random_range(0..=order.len());
                order.insert(at, Source::Extra(e));
            }
        }
        let header: Vec<String> = order
            .iter()
            .map(|s| {
                let name = match *s {
                    Source::Declared(i) => declared.get(i).copied().unwrap_or(""),
                    Source::Extra(e) => EXTRA_COLUMNS[e],
                };
                if dialect.odd_header {
                    match rng.random_range(0..3) {
                        0 => format!(" {} ", title(name)),
                        1 => name.to_uppercase(),
                        _ => format!("{name} "),
                    }
                } else {
                    name.to_string()
                }
            })
            .collect();
        let out = if dialect.gzip {
            Out::Gz(Box::new(GzEncoder::new(w, Compression::default())))
        } else {
            Out::Plain(w)
        };
        let mut pw = PartWriter {
            out,
            dialect,
            order: order.clone(),
            buf: Vec::with_capacity(FLUSH_AT + 4096),
            line: String::new(),
            rng,
            rows: 0,
            non_ascii: false,
        };
        if dialect.bom {
            pw.buf.extend_from_slice(b"\xEF\xBB\xBF");
        }
        let cells: Vec<&str> = header.iter().map(String::as_str).collect();
        pw.push_line(&cells, None)?;
        Ok((pw, order, header))
    }

    /// Writes one record from raw texts in declared order; `malformed` adds (`true`) or drops a field.
    pub(crate) fn write_row(&mut self, raw: &[&str], malformed: Option<bool>) -> io::Result<()> {
        let mut extras: [String; 2] = Default::default();
        if self.dialect.extra_columns {
            extras[0] = format!("L-{:04}", self.rng.random_range(1..500));
            extras[1] = ["app", "app", "web", "telefone"][self.rng.random_range(0..4)].to_string();
        }
        let mut cells: Vec<&str> = self
            .order
            .iter()
            .map(|s| match *s {
                Source::Declared(i) => raw.get(i).copied().unwrap_or(""),
                Source::Extra(e) => extras[e].as_str(),
            })
            .collect();
        match malformed {
            Some(true) => cells.push("sobra"),
            Some(false) => {
                cells.pop();
            }
            None => {}
        }
        self.push_line(&cells, Some(()))?;
        self.rows += 1;
        Ok(())
    }

    fn push_line(&mut self, cells: &[&str], data: Option<()>) -> io::Result<()> {
        let delim = if self.dialect.semicolon { ';' } else { ',' };
        self.line.clear();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                self.line.push(delim);
            }
            let must = c.contains([delim, '"', '\n', '\r']);
            let may = data.is_some()
                && self.dialect.quote_some
                && !c.is_empty()
                && self.rng.random_bool(0.1);
            if must || may {
                self.line.push('"');
                self.line.push_str(&c.replace('"', "\"\""));
                self.line.push('"');
            } else {
                self.line.push_str(c);
            }
        }
        self.line
            .push_str(if self.dialect.crlf { "\r\n" } else { "\n" });
        if !self.line.is_ascii() {
            self.non_ascii = true;
        }
        if self.dialect.latin1 {
            let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(&self.line);
            self.buf.extend_from_slice(&bytes);
        } else {
            self.buf.extend_from_slice(self.line.as_bytes());
        }
        if self.buf.len() >= FLUSH_AT {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Flushes the buffer and completes the object.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        self.out.finish()
    }
}
