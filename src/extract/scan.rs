//! Where a CSV line's delimiters and quotes are, one bit a byte, found 16 bytes at a time (SSE2,
//! which every x86-64 CPU has; a byte loop on other targets), with whether the line holds a NUL
//! or a byte past ASCII: one pass over the line instead of a search per field.

/// The bytes of one line the CSV reader looks for.
#[derive(Debug, Default)]
pub struct LineScan {
    /// One bit a byte: the delimiters.
    delimiters: Vec<u64>,
    /// One bit a byte: the quotes.
    quotes: Vec<u64>,
    /// Whether the line holds a quote.
    pub quoted: bool,
    /// Whether the line holds a NUL byte.
    pub nul: bool,
    /// Whether every byte of the line is ASCII (so the line is UTF-8).
    pub ascii: bool,
}

impl LineScan {
    /// Scans `line` for `delimiter`, quotes, NUL bytes and bytes past ASCII.
    pub fn scan(&mut self, line: &[u8], delimiter: u8) {
        let words = line.len().div_ceil(64);
        self.delimiters.clear();
        self.delimiters.resize(words, 0);
        self.quotes.clear();
        self.quotes.resize(words, 0);
        let mut chunks = line.chunks_exact(16);
        let mut any = scan_chunks(
            &mut chunks,
            delimiter,
            &mut self.delimiters,
            &mut self.quotes,
        );
        let rest = chunks.remainder();
        if !rest.is_empty() {
            // The last chunk, padded with zeros: their bits are dropped.
            let mut padded = [0u8; 16];
            padded[..rest.len()].copy_from_slice(rest);
            let (mut delimiters, mut quotes) = ([0u64], [0u64]);
            let mut last = padded.chunks_exact(16);
            let rest_any = scan_chunks(&mut last, delimiter, &mut delimiters, &mut quotes);
            let keep = (1u64 << rest.len()) - 1;
            let shift = 16 * (line.len() / 16 % 4);
            self.delimiters[words - 1] |= (delimiters[0] & keep) << shift;
            self.quotes[words - 1] |= (quotes[0] & keep) << shift;
            for (a, r) in any.iter_mut().zip(rest_any) {
                *a |= r & keep as u16;
            }
        }
        let [quoted, nul, high] = any;
        self.quoted = quoted != 0;
        self.nul = nul != 0;
        self.ascii = high == 0;
    }

    /// The first delimiter at or after `from`.
    pub fn next_delimiter(&self, from: usize) -> Option<usize> {
        next_bit(&self.delimiters, from)
    }

    /// The first quote at or after `from`.
    pub fn next_quote(&self, from: usize) -> Option<usize> {
        next_bit(&self.quotes, from)
    }

    /// Every delimiter's position, in order.
    pub fn delimiters(&self) -> impl Iterator<Item = usize> + '_ {
        self.delimiters.iter().enumerate().flat_map(|(w, &bits)| {
            std::iter::successors(Some(bits), |b| Some(b & b.wrapping_sub(1)))
                .take_while(|&b| b != 0)
                .map(move |b| w * 64 + b.trailing_zeros() as usize)
        })
    }
}

/// The first set bit at or after `from` in a bit set of one bit a byte.
fn next_bit(bits: &[u64], from: usize) -> Option<usize> {
    let mut w = from / 64;
    let mut word = bits.get(w)? & (!0u64 << (from % 64));
    loop {
        if word != 0 {
            return Some(w * 64 + word.trailing_zeros() as usize);
        }
        w += 1;
        word = *bits.get(w)?;
    }
}

/// Sets the delimiter and quote bits of 16-byte chunks (one bit a byte, from bit 0 of the
/// first word); returns the quote, NUL and non-ASCII bytes found, OR-ed over the chunks as
/// 16-bit masks.
#[cfg(target_arch = "x86_64")]
fn scan_chunks(
    chunks: &mut std::slice::ChunksExact<'_, u8>,
    delimiter: u8,
    delimiters: &mut [u64],
    quotes: &mut [u64],
) -> [u16; 3] {
    // SAFETY: SSE2 is part of the x86-64 baseline: every x86-64 CPU has it.
    unsafe { scan_chunks_sse2(chunks, delimiter, delimiters, quotes) }
}

/// [`scan_chunks`] with SSE2: a compare a class, a mask extraction a bit set.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn scan_chunks_sse2(
    chunks: &mut std::slice::ChunksExact<'_, u8>,
    delimiter: u8,
    delimiters: &mut [u64],
    quotes: &mut [u64],
) -> [u16; 3] {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_setzero_si128,
    };
    let (delimiter, quote, zero) = (
        _mm_set1_epi8(delimiter as i8),
        _mm_set1_epi8(b'"' as i8),
        _mm_setzero_si128(),
    );
    let (mut nul, mut high) = (zero, zero);
    let mut quoted = 0u16;
    let bits = |x: __m128i| u64::from(_mm_movemask_epi8(x) as u16);
    for (c, chunk) in chunks.enumerate() {
        // SAFETY: a chunk has 16 bytes; the load has no alignment requirement.
        let v = unsafe { _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>()) };
        let shift = 16 * (c % 4);
        delimiters[c / 4] |= bits(_mm_cmpeq_epi8(v, delimiter)) << shift;
        let q = bits(_mm_cmpeq_epi8(v, quote));
        quotes[c / 4] |= q << shift;
        quoted |= q as u16;
        nul = _mm_or_si128(nul, _mm_cmpeq_epi8(v, zero));
        high = _mm_or_si128(high, v);
    }
    [quoted, bits(nul) as u16, bits(high) as u16]
}

/// Sets the delimiter and quote bits of 16-byte chunks, a byte at a time (see the x86-64
/// version; this one is also the reference its tests compare with).
#[cfg(any(test, not(target_arch = "x86_64")))]
fn scan_chunks_bytewise(
    chunks: &mut std::slice::ChunksExact<'_, u8>,
    delimiter: u8,
    delimiters: &mut [u64],
    quotes: &mut [u64],
) -> [u16; 3] {
    let mut any = [0u16; 3];
    for (c, chunk) in chunks.enumerate() {
        for (i, &b) in chunk.iter().enumerate() {
            let at = c * 16 + i;
            delimiters[at / 64] |= u64::from(b == delimiter) << (at % 64);
            quotes[at / 64] |= u64::from(b == b'"') << (at % 64);
            for (a, hit) in any.iter_mut().zip([b == b'"', b == 0, b >= 0x80]) {
                *a |= u16::from(hit) << i;
            }
        }
    }
    any
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
            let (mut d1, mut q1, mut d2, mut q2) = (vec![0; words], vec![0; words], vec![0; words], vec![0; words]);
            let a = scan_chunks(&mut bytes.chunks_exact(16), delimiter, &mut d1, &mut q1);
            let b = scan_chunks_bytewise(&mut bytes.chunks_exact(16), delimiter, &mut d2, &mut q2);
            prop_assert_eq!((a, d1, q1), (b, d2, q2));
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
            prop_assert_eq!(scan.quoted, line.contains(&b'"'));
            prop_assert_eq!(scan.nul, line.contains(&0));
            prop_assert_eq!(scan.ascii, line.is_ascii());
        }
    }
}
