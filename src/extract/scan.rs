//! Where a CSV line's delimiters, quotes and bytes past ASCII are, one bit a byte, found 16
//! bytes at a time (SSE2, which every x86-64 CPU has; a byte loop on other targets), with whether
//! the line holds a NUL: one pass over the line instead of a search per field.

/// The bytes of one line the CSV reader looks for.
#[derive(Debug, Default)]
pub struct LineScan {
    /// One bit a byte, 64 bytes a word: the delimiters, the quotes, the bytes past ASCII.
    words: Vec<Classes>,
    /// The line's length.
    len: usize,
    /// Whether the line holds a quote.
    pub quoted: bool,
    /// Whether the line holds a NUL byte.
    pub nul: bool,
    /// Whether every byte of the line is ASCII (so the line is UTF-8).
    pub ascii: bool,
}

/// The bits of 64 bytes of a line: delimiters, quotes, bytes past ASCII.
type Classes = [u64; 3];
/// A class of bytes: its index in [`Classes`].
const DELIMITER: usize = 0;
const QUOTE: usize = 1;
const HIGH: usize = 2;

impl LineScan {
    /// Scans `line` for `delimiter`, quotes, NUL bytes and bytes past ASCII.
    pub fn scan(&mut self, line: &[u8], delimiter: u8) {
        let words = line.len().div_ceil(64);
        self.words.clear();
        self.words.resize(words, [0; 3]);
        self.len = line.len();
        let mut chunks = line.chunks_exact(16);
        let mut nul = scan_chunks(&mut chunks, delimiter, &mut self.words);
        let rest = chunks.remainder();
        if !rest.is_empty() {
            // The last chunk, padded with zeros: a padding byte can match the delimiter or be
            // NUL, so the padding's bits are dropped and the NUL test is on the bytes themselves.
            let mut padded = [0u8; 16];
            padded[..rest.len()].copy_from_slice(rest);
            let mut last = [[0; 3]];
            scan_chunks(&mut padded.chunks_exact(16), delimiter, &mut last);
            nul |= rest.contains(&0);
            let (keep, shift) = ((1u64 << rest.len()) - 1, 16 * (line.len() / 16 % 4));
            for (w, l) in self.words[words - 1].iter_mut().zip(last[0]) {
                *w |= (l & keep) << shift;
            }
        }
        let any = |class: usize| self.words.iter().any(|w| w[class] != 0);
        self.quoted = any(QUOTE);
        self.ascii = !any(HIGH);
        self.nul = nul;
    }

    /// The first delimiter at or after `from`.
    pub fn next_delimiter(&self, from: usize) -> Option<usize> {
        self.next(DELIMITER, from)
    }

    /// The first quote at or after `from`.
    pub fn next_quote(&self, from: usize) -> Option<usize> {
        self.next(QUOTE, from)
    }

    /// Returns true when all the bytes in `range` (within the line) are ASCII; it reads the
    /// range's own words only, so checking every field of a long line stays linear.
    pub fn is_ascii(&self, range: std::ops::Range<usize>) -> bool {
        // A range past the line is not known to be ASCII: the caller checks its bytes.
        range.is_empty()
            || (range.end <= self.len && self.next_before(HIGH, range.start, range.end).is_none())
    }

    /// Every delimiter's position, in order.
    pub fn delimiters(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, classes)| {
            std::iter::successors(Some(classes[DELIMITER]), |b| Some(b & b.wrapping_sub(1)))
                .take_while(|&b| b != 0)
                .map(move |b| w * 64 + b.trailing_zeros() as usize)
        })
    }

    /// The first byte of `class` at or after `from`.
    fn next(&self, class: usize, from: usize) -> Option<usize> {
        self.next_before(class, from, usize::MAX)
    }

    /// The first byte of `class` at or after `from` and before `end`, reading no word past it.
    fn next_before(&self, class: usize, from: usize, end: usize) -> Option<usize> {
        let mut w = from / 64;
        let mut word = self.words.get(w)?[class] & (!0u64 << (from % 64));
        loop {
            if word != 0 {
                let at = w * 64 + word.trailing_zeros() as usize;
                return (at < end).then_some(at);
            }
            w += 1;
            if w * 64 >= end {
                return None;
            }
            word = self.words.get(w)?[class];
        }
    }
}

/// Sets the class bits of 16-byte chunks (one bit a byte, from the first word's bit 0);
/// returns whether a NUL byte was found.
#[cfg(target_arch = "x86_64")]
fn scan_chunks(
    chunks: &mut std::slice::ChunksExact<'_, u8>,
    delimiter: u8,
    words: &mut [Classes],
) -> bool {
    // SAFETY: SSE2 is part of the x86-64 baseline: every x86-64 CPU has it.
    unsafe { scan_chunks_sse2(chunks, delimiter, words) }
}

/// [`scan_chunks`] with SSE2: a compare a class, a mask extraction a bit set.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn scan_chunks_sse2(
    chunks: &mut std::slice::ChunksExact<'_, u8>,
    delimiter: u8,
    words: &mut [Classes],
) -> bool {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_setzero_si128,
    };
    let (delimiter, quote, zero) = (
        _mm_set1_epi8(delimiter as i8),
        _mm_set1_epi8(b'"' as i8),
        _mm_setzero_si128(),
    );
    let mut nul = zero;
    let bits = |x: __m128i| u64::from(_mm_movemask_epi8(x) as u16);
    for (c, chunk) in chunks.enumerate() {
        // SAFETY: a chunk has 16 bytes; the load has no alignment requirement.
        let v = unsafe { _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>()) };
        let shift = 16 * (c % 4);
        let w = &mut words[c / 4];
        w[DELIMITER] |= bits(_mm_cmpeq_epi8(v, delimiter)) << shift;
        w[QUOTE] |= bits(_mm_cmpeq_epi8(v, quote)) << shift;
        w[HIGH] |= bits(v) << shift;
        nul = _mm_or_si128(nul, _mm_cmpeq_epi8(v, zero));
    }
    bits(nul) != 0
}

/// Sets the class bits of 16-byte chunks, a byte at a time (see the x86-64 version; this one
/// is also the reference its tests compare with).
#[cfg(any(test, not(target_arch = "x86_64")))]
fn scan_chunks_bytewise(
    chunks: &mut std::slice::ChunksExact<'_, u8>,
    delimiter: u8,
    words: &mut [Classes],
) -> bool {
    let mut nul = false;
    for (c, chunk) in chunks.enumerate() {
        for (i, &b) in chunk.iter().enumerate() {
            let at = c * 16 + i;
            let w = &mut words[at / 64];
            w[DELIMITER] |= u64::from(b == delimiter) << (at % 64);
            w[QUOTE] |= u64::from(b == b'"') << (at % 64);
            w[HIGH] |= u64::from(b >= 0x80) << (at % 64);
            nul |= b == 0;
        }
    }
    nul
}

#[cfg(not(target_arch = "x86_64"))]
use scan_chunks_bytewise as scan_chunks;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Positions of `needle` in `line`, a byte at a time.
    fn positions(line: &[u8], needle: u8) -> Vec<usize> {
        (0..line.len()).filter(|&i| line[i] == needle).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn chunks_agree_with_a_byte_by_byte_scan(
            bytes in prop::collection::vec(
                prop::sample::select(vec![0u8, b',', b';', b'"', b'a', b' ', 0x7f, 0x80, 0xe9, 0xff]),
                0..200,
            ),
            delimiter in prop::sample::select(vec![b',', b';', b'\t']),
        ) {
            let words = bytes.len().div_ceil(64);
            let (mut vector, mut bytewise) = (vec![[0; 3]; words], vec![[0; 3]; words]);
            let a = scan_chunks(&mut bytes.chunks_exact(16), delimiter, &mut vector);
            let b = scan_chunks_bytewise(&mut bytes.chunks_exact(16), delimiter, &mut bytewise);
            prop_assert_eq!((a, vector), (b, bytewise));
        }

        #[test]
        fn a_line_scan_finds_every_delimiter_and_quote(
            line in prop::collection::vec(
                prop::sample::select(vec![0u8, b',', b'"', b'a', 0xc3, 0xa9]),
                0..300,
            ),
        ) {
            let mut scan = LineScan::default();
            scan.scan(&line, b',');
            let delimiters = positions(&line, b',');
            prop_assert_eq!(scan.delimiters().collect::<Vec<_>>(), delimiters.clone());
            for from in 0..=line.len() + 64 {
                prop_assert_eq!(scan.next_delimiter(from), delimiters.iter().copied().find(|&p| p >= from));
                prop_assert_eq!(scan.next_quote(from), positions(&line, b'"').into_iter().find(|&p| p >= from));
            }
            for start in (0..=line.len()).step_by(13) {
                for end in (start..=line.len()).step_by(11) {
                    prop_assert_eq!(scan.is_ascii(start..end), line[start..end].is_ascii());
                }
            }
            prop_assert_eq!(scan.quoted, line.contains(&b'"'));
            prop_assert_eq!(scan.nul, line.contains(&0));
            prop_assert_eq!(scan.ascii, line.is_ascii());
        }
    }
}
