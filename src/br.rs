//! Brazilian reference data and check digits: states, area codes, CEP ranges, CPF, GTIN-13, municipalities.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The 27 federative units (26 states and the Federal District), in alphabetical order of code.
pub const UFS: [&str; 27] = [
    "AC", "AL", "AM", "AP", "BA", "CE", "DF", "ES", "GO", "MA", "MG", "MS", "MT", "PA", "PB", "PE",
    "PI", "PR", "RJ", "RN", "RO", "RR", "RS", "SC", "SE", "SP", "TO",
];

/// Telephone area codes (DDD) in use, with the federative unit each serves (Anatel).
pub const DDDS: [(u8, &str); 67] = [
    (11, "SP"),
    (12, "SP"),
    (13, "SP"),
    (14, "SP"),
    (15, "SP"),
    (16, "SP"),
    (17, "SP"),
    (18, "SP"),
    (19, "SP"),
    (21, "RJ"),
    (22, "RJ"),
    (24, "RJ"),
    (27, "ES"),
    (28, "ES"),
    (31, "MG"),
    (32, "MG"),
    (33, "MG"),
    (34, "MG"),
    (35, "MG"),
    (37, "MG"),
    (38, "MG"),
    (41, "PR"),
    (42, "PR"),
    (43, "PR"),
    (44, "PR"),
    (45, "PR"),
    (46, "PR"),
    (47, "SC"),
    (48, "SC"),
    (49, "SC"),
    (51, "RS"),
    (53, "RS"),
    (54, "RS"),
    (55, "RS"),
    (61, "DF"),
    (62, "GO"),
    (63, "TO"),
    (64, "GO"),
    (65, "MT"),
    (66, "MT"),
    (67, "MS"),
    (68, "AC"),
    (69, "RO"),
    (71, "BA"),
    (73, "BA"),
    (74, "BA"),
    (75, "BA"),
    (77, "BA"),
    (79, "SE"),
    (81, "PE"),
    (82, "AL"),
    (83, "PB"),
    (84, "RN"),
    (85, "CE"),
    (86, "PI"),
    (87, "PE"),
    (88, "CE"),
    (89, "PI"),
    (91, "PA"),
    (92, "AM"),
    (93, "PA"),
    (94, "PA"),
    (95, "RR"),
    (96, "AP"),
    (97, "AM"),
    (98, "MA"),
    (99, "MA"),
];

/// CEP ranges (first five digits, inclusive) assigned to each federative unit by Correios.
pub const CEP_RANGES: [(&str, u32, u32); 30] = [
    ("SP", 1000, 19999),
    ("RJ", 20000, 28999),
    ("ES", 29000, 29999),
    ("MG", 30000, 39999),
    ("BA", 40000, 48999),
    ("SE", 49000, 49999),
    ("PE", 50000, 56999),
    ("AL", 57000, 57999),
    ("PB", 58000, 58999),
    ("RN", 59000, 59999),
    ("CE", 60000, 63999),
    ("PI", 64000, 64999),
    ("MA", 65000, 65999),
    ("PA", 66000, 68899),
    ("AP", 68900, 68999),
    ("AM", 69000, 69299),
    ("RR", 69300, 69399),
    ("AM", 69400, 69899),
    ("AC", 69900, 69999),
    ("DF", 70000, 72799),
    ("GO", 72800, 72999),
    ("DF", 73000, 73699),
    ("GO", 73700, 76799),
    ("RO", 76800, 76999),
    ("TO", 77000, 77999),
    ("MT", 78000, 78899),
    ("MS", 79000, 79999),
    ("PR", 80000, 87999),
    ("SC", 88000, 89999),
    ("RS", 90000, 99999),
];

/// Returns true when `uf` (upper case) is one of the 27 federative units.
pub fn is_uf(uf: &str) -> bool {
    uf_static(uf).is_some()
}

/// Each UF's position in [`UFS`] by its letters (`(first - 'A') * 26 + second - 'A'`); 27: none.
const UF_BY_LETTERS: [u8; 26 * 26] = {
    let mut t = [27u8; 26 * 26];
    let mut i = 0;
    while i < UFS.len() {
        let b = UFS[i].as_bytes();
        t[(b[0] - b'A') as usize * 26 + (b[1] - b'A') as usize] = i as u8;
        i += 1;
    }
    t
};

/// The position in [`UFS`] of a two-letter code in either case (`SP`, `sp`, `Sp`), in one table
/// look-up: a binary search's mispredicted branches cost more than the rest of a row's UF check.
pub fn uf_index(code: &[u8]) -> Option<usize> {
    let &[a, b] = code else { return None };
    // A letter of either case maps to 0..=25; any other byte to 26 or more (wrapping).
    let letter = |c: u8| (c | 0x20).wrapping_sub(b'a');
    let (a, b) = (letter(a), letter(b));
    if a >= 26 || b >= 26 {
        return None;
    }
    let i = UF_BY_LETTERS[a as usize * 26 + b as usize] as usize;
    (i < UFS.len()).then_some(i)
}

/// Returns true when `ddd` is an area code in use.
pub fn is_ddd(ddd: u8) -> bool {
    DDDS.iter().any(|&(d, _)| d == ddd)
}

/// Area codes serving one federative unit.
pub fn ddds_of(uf: &str) -> impl Iterator<Item = u8> + '_ {
    DDDS.iter().filter(move |(_, u)| *u == uf).map(|&(d, _)| d)
}

/// CEP prefix ranges (first five digits) of one federative unit.
pub fn cep_ranges_of(uf: &str) -> impl Iterator<Item = (u32, u32)> + '_ {
    CEP_RANGES
        .iter()
        .filter(move |(u, _, _)| *u == uf)
        .map(|&(_, lo, hi)| (lo, hi))
}

/// Computes the two CPF check digits of the first nine digits.
pub fn cpf_check_digits(base: &[u8; 9]) -> [u8; 2] {
    let d1 = cpf_digit(base.iter().copied(), 10);
    let d2 = cpf_digit(base.iter().copied().chain([d1]), 11);
    [d1, d2]
}

fn cpf_digit(digits: impl Iterator<Item = u8>, first_weight: u32) -> u8 {
    let sum: u32 = digits
        .zip((2..=first_weight).rev())
        .map(|(d, w)| u32::from(d) * w)
        .sum();
    let r = (sum * 10) % 11;
    if r == 10 { 0 } else { r as u8 }
}

/// Returns true when 11 digits form a valid CPF (check digits right, not all the same digit).
pub fn cpf_is_valid(digits: &[u8; 11]) -> bool {
    if digits.iter().all(|&d| d == digits[0]) {
        return false;
    }
    let base: [u8; 9] = digits[..9].try_into().expect("nine digits");
    cpf_check_digits(&base) == [digits[9], digits[10]]
}

/// Computes the GTIN-13 check digit of the first twelve digits.
pub fn gtin13_check_digit(base: &[u8; 12]) -> u8 {
    let sum: u32 = base
        .iter()
        .enumerate()
        .map(|(i, &d)| u32::from(d) * if i % 2 == 0 { 1 } else { 3 })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// Returns true when 13 digits form a GTIN-13 with a valid check digit.
pub fn gtin13_is_valid(digits: &[u8; 13]) -> bool {
    let base: [u8; 12] = digits[..12].try_into().expect("twelve digits");
    gtin13_check_digit(&base) == digits[12]
}

/// One municipality of IBGE's territorial division.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Municipality {
    /// IBGE's seven-digit municipality code.
    pub ibge_code: u32,
    /// Official name, with accents.
    pub name: String,
    /// Federative unit.
    pub uf: &'static str,
}

/// The municipalities file shipped with the project (see `data/README.md` for its source).
const MUNICIPIOS_CSV: &str = include_str!("../data/municipios.csv");

/// Returns every municipality of IBGE's list, in code order.
pub fn municipalities() -> &'static [Municipality] {
    static ALL: OnceLock<Vec<Municipality>> = OnceLock::new();
    ALL.get_or_init(|| {
        MUNICIPIOS_CSV
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let mut it = line.splitn(3, ',');
                let code = it.next().unwrap_or_default();
                let name = it.next().unwrap_or_default();
                let uf = it.next().unwrap_or_default().trim();
                Municipality {
                    ibge_code: code.parse().expect("shipped municipality code is numeric"),
                    name: name.trim_matches('"').to_string(),
                    uf: UFS[UFS
                        .binary_search(&uf)
                        .expect("shipped municipality has a known uf")],
                }
            })
            .collect()
    })
}

/// Folds a name for comparison: no accents, lower case, single spaces, no punctuation but letters and digits.
pub fn fold_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut space = false;
    for c in name.chars() {
        let base = fold_char(c);
        if base.is_alphanumeric() {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            for l in base.to_lowercase() {
                out.push(l);
            }
        } else {
            space = true;
        }
    }
    out
}

fn fold_char(c: char) -> char {
    match c {
        'á' | 'à' | 'â' | 'ã' | 'ä' => 'a',
        'Á' | 'À' | 'Â' | 'Ã' | 'Ä' => 'a',
        'é' | 'è' | 'ê' | 'ë' | 'É' | 'È' | 'Ê' | 'Ë' => 'e',
        'í' | 'ì' | 'î' | 'ï' | 'Í' | 'Ì' | 'Î' | 'Ï' => 'i',
        'ó' | 'ò' | 'ô' | 'õ' | 'ö' | 'Ó' | 'Ò' | 'Ô' | 'Õ' | 'Ö' => 'o',
        'ú' | 'ù' | 'û' | 'ü' | 'Ú' | 'Ù' | 'Û' | 'Ü' => 'u',
        'ç' | 'Ç' => 'c',
        'ñ' | 'Ñ' => 'n',
        other => other,
    }
}

/// Looks up the canonical spelling of a municipality by its folded name and UF.
pub fn canonical_municipality(name: &str, uf: &str) -> Option<&'static str> {
    static INDEX: OnceLock<HashMap<(String, &'static str), &'static str>> = OnceLock::new();
    let index = INDEX.get_or_init(|| {
        municipalities()
            .iter()
            .map(|m| ((fold_name(&m.name), m.uf), m.name.as_str()))
            .collect()
    });
    index.get(&(fold_name(name), uf_static(uf)?)).copied()
}

/// The official name of a municipality of `uf` written exactly as it is officially spelled (as
/// nearly every value is): what [`canonical_municipality`] gives for it, without folding it.
pub fn official_municipality(name: &str, uf: &str) -> Option<&'static str> {
    static NAMES: OnceLock<OfficialNames> = OnceLock::new();
    NAMES
        .get_or_init(OfficialNames::new)
        .find(uf_position(uf)?, name)
}

/// The official names by (UF, exact spelling), in one flat open-addressed table: a row's look-up
/// hashes once and compares one name, where a set per UF also followed a pointer per entry.
struct OfficialNames {
    /// At least twice as many slots as names, a power of two: probes stay short.
    slots: Vec<NameSlot>,
    /// Every name end to end; slots point into it.
    text: String,
    /// Fixed seeds: the table is built and read in one process.
    hasher: ahash::RandomState,
}

/// A slot of [`OfficialNames`]: an empty slot has `len` 0.
#[derive(Clone, Copy, Default)]
struct NameSlot {
    hash: u64,
    start: u32,
    len: u32,
}

impl OfficialNames {
    /// Indexes the names the folded index gives back: two spellings that fold alike keep the
    /// index's answer.
    fn new() -> OfficialNames {
        let hasher = ahash::RandomState::with_seeds(0x5eed, 0xca7a, 0x10c0, 0x1b9e);
        let official: Vec<(usize, &str)> = municipalities()
            .iter()
            .filter(|m| canonical_municipality(&m.name, m.uf) == Some(m.name.as_str()))
            .filter_map(|m| Some((uf_position(m.uf)?, m.name.as_str())))
            .collect();
        let mut slots = vec![NameSlot::default(); (official.len() * 2).next_power_of_two()];
        let mask = slots.len() - 1;
        let mut text = String::new();
        for (uf, name) in official {
            let hash = hasher.hash_one((uf as u8, name));
            let mut i = hash as usize & mask;
            while slots[i].len != 0 {
                i = (i + 1) & mask;
            }
            let (start, len) = (text.len() as u32, name.len() as u32);
            slots[i] = NameSlot { hash, start, len };
            text.push_str(name);
        }
        OfficialNames {
            slots,
            text,
            hasher,
        }
    }

    /// The official name spelled exactly `name` in the UF at position `uf` of [`UFS`].
    fn find(&'static self, uf: usize, name: &str) -> Option<&'static str> {
        let hash = self.hasher.hash_one((uf as u8, name));
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot.len == 0 {
                return None;
            }
            if slot.hash == hash {
                let found = &self.text[slot.start as usize..(slot.start + slot.len) as usize];
                if found == name {
                    return Some(found);
                }
            }
            i = (i + 1) & mask;
        }
    }
}

/// The position in [`UFS`] of an upper-case code.
fn uf_position(uf: &str) -> Option<usize> {
    uf_index(uf.as_bytes()).filter(|&i| UFS[i] == uf)
}

fn uf_static(uf: &str) -> Option<&'static str> {
    uf_position(uf).map(|i| UFS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpf_check_digits_of_known_numbers() {
        // 529.982.247-25 is the textbook example of a valid CPF.
        assert_eq!(cpf_check_digits(&[5, 2, 9, 9, 8, 2, 2, 4, 7]), [2, 5]);
        assert!(cpf_is_valid(&[5, 2, 9, 9, 8, 2, 2, 4, 7, 2, 5]));
        assert!(!cpf_is_valid(&[5, 2, 9, 9, 8, 2, 2, 4, 7, 2, 6]));
        assert!(!cpf_is_valid(&[1; 11]));
    }

    #[test]
    fn gtin_check_digit_of_a_known_ean() {
        // 7894900011517 is a Brazilian soft drink EAN.
        assert!(gtin13_is_valid(&[7, 8, 9, 4, 9, 0, 0, 0, 1, 1, 5, 1, 7]));
        assert!(!gtin13_is_valid(&[7, 8, 9, 4, 9, 0, 0, 0, 1, 1, 5, 1, 8]));
    }

    #[test]
    fn reference_tables_are_complete() {
        assert_eq!(UFS.len(), 27);
        assert!(
            UFS.windows(2).all(|w| w[0] < w[1]),
            "UFS sorted for binary search"
        );
        for uf in UFS {
            assert!(ddds_of(uf).count() > 0, "{uf} has an area code");
            assert!(cep_ranges_of(uf).count() > 0, "{uf} has a CEP range");
        }
    }

    #[test]
    fn ibge_list_has_every_municipality() {
        let all = municipalities();
        assert_eq!(
            all.len(),
            5571,
            "IBGE DTB 2024: 5,570 plus Boa Esperança do Norte/MT"
        );
        assert_eq!(all.iter().filter(|m| m.uf == "SP").count(), 645);
        assert_eq!(all.iter().filter(|m| m.uf == "DF").count(), 1);
    }

    #[test]
    fn municipality_names_are_canonicalized() {
        assert_eq!(canonical_municipality("SAO PAULO", "SP"), Some("São Paulo"));
        assert_eq!(
            canonical_municipality(" sao  paulo", "SP"),
            Some("São Paulo")
        );
        assert_eq!(canonical_municipality("brasilia", "DF"), Some("Brasília"));
        assert_eq!(canonical_municipality("Sao Paulo", "RJ"), None);
    }

    #[test]
    fn official_spellings_read_as_the_folded_index_reads_them() {
        let mut exact = 0;
        for m in municipalities() {
            let official = official_municipality(&m.name, m.uf);
            if official.is_some() {
                exact += 1;
                assert_eq!(
                    official,
                    canonical_municipality(&m.name, m.uf),
                    "{}",
                    m.name
                );
            }
            // Another UF's name or another spelling is not official there.
            assert_eq!(official_municipality(&m.name, "XX"), None);
            assert_eq!(official_municipality(&m.name.to_uppercase(), m.uf), None);
        }
        assert!(exact >= 5_500, "{exact} names read directly");
        assert_eq!(official_municipality("Sao Paulo", "SP"), None);
        assert_eq!(official_municipality("São Paulo", "SP"), Some("São Paulo"));
        assert_eq!(official_municipality("São Paulo", "RJ"), None);
        assert_eq!(official_municipality("São Paulo", "sp"), None);
    }

    #[test]
    fn uf_index_finds_each_code_in_either_case() {
        for (i, uf) in UFS.iter().enumerate() {
            assert_eq!(uf_index(uf.as_bytes()), Some(i));
            assert_eq!(uf_index(uf.to_lowercase().as_bytes()), Some(i));
        }
        for bad in ["", "S", "SPX", "XX", "S\u{e3}", "@P", "[P", "S{"] {
            assert_eq!(uf_index(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
