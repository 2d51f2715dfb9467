//! Realistic Brazilian people and places: names, municipalities, CEPs, phones, CPFs, e-mails.

use std::sync::OnceLock;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::br;

const FIRST_NAMES: &[&str] = &[
    "Maria",
    "José",
    "Ana",
    "João",
    "Antônio",
    "Francisco",
    "Carlos",
    "Paulo",
    "Pedro",
    "Lucas",
    "Luiz",
    "Marcos",
    "Luís",
    "Gabriel",
    "Rafael",
    "Daniel",
    "Marcelo",
    "Bruno",
    "Eduardo",
    "Felipe",
    "Raimundo",
    "Rodrigo",
    "Juliana",
    "Márcia",
    "Fernanda",
    "Patrícia",
    "Aline",
    "Adriana",
    "Sandra",
    "Camila",
    "Amanda",
    "Letícia",
    "Bruna",
    "Júlia",
    "Luana",
    "Beatriz",
    "Larissa",
    "Vitória",
    "Sebastião",
    "Conceição",
    "Cláudia",
    "Vinícius",
    "Gustavo",
    "Matheus",
    "Thaís",
    "Débora",
    "Fábio",
    "Sérgio",
    "Mônica",
    "Renata",
    "Heloísa",
    "Otávio",
    "Inês",
    "Valéria",
    "Lúcia",
];

const LAST_NAMES: &[&str] = &[
    "Silva",
    "Santos",
    "Oliveira",
    "Souza",
    "Rodrigues",
    "Ferreira",
    "Alves",
    "Pereira",
    "Lima",
    "Gomes",
    "Costa",
    "Ribeiro",
    "Martins",
    "Carvalho",
    "Almeida",
    "Lopes",
    "Soares",
    "Fernandes",
    "Vieira",
    "Barbosa",
    "Rocha",
    "Dias",
    "Nascimento",
    "Andrade",
    "Moreira",
    "Nunes",
    "Marques",
    "Machado",
    "Mendes",
    "Freitas",
    "Cardoso",
    "Ramos",
    "Gonçalves",
    "Santana",
    "Teixeira",
    "Araújo",
    "Conceição",
    "Magalhães",
    "Brandão",
    "Assunção",
    "Sá",
    "Simões",
    "Falcão",
    "Leão",
];

const EMAIL_DOMAINS: &[&str] = &[
    "gmail.com",
    "gmail.com",
    "gmail.com",
    "hotmail.com",
    "outlook.com",
    "yahoo.com.br",
    "uol.com.br",
    "bol.com.br",
    "terra.com.br",
    "icloud.com",
];

/// Large municipalities with their population in thousands, to weight where customers live.
const BIG_CITIES: &[(&str, &str, u32)] = &[
    ("São Paulo", "SP", 11451),
    ("Rio de Janeiro", "RJ", 6211),
    ("Brasília", "DF", 2817),
    ("Fortaleza", "CE", 2428),
    ("Salvador", "BA", 2418),
    ("Belo Horizonte", "MG", 2315),
    ("Manaus", "AM", 2063),
    ("Curitiba", "PR", 1773),
    ("Recife", "PE", 1488),
    ("Goiânia", "GO", 1437),
    ("Porto Alegre", "RS", 1332),
    ("Belém", "PA", 1303),
    ("Guarulhos", "SP", 1291),
    ("Campinas", "SP", 1139),
    ("São Luís", "MA", 1037),
    ("Maceió", "AL", 957),
    ("Campo Grande", "MS", 898),
    ("São Gonçalo", "RJ", 896),
    ("Teresina", "PI", 866),
    ("João Pessoa", "PB", 833),
    ("São Bernardo do Campo", "SP", 810),
    ("Duque de Caxias", "RJ", 808),
    ("Nova Iguaçu", "RJ", 785),
    ("Natal", "RN", 751),
    ("Santo André", "SP", 748),
    ("Osasco", "SP", 728),
    ("Sorocaba", "SP", 723),
    ("Uberlândia", "MG", 713),
    ("Ribeirão Preto", "SP", 698),
    ("São José dos Campos", "SP", 697),
    ("Cuiabá", "MT", 650),
    ("Jaboatão dos Guararapes", "PE", 644),
    ("Contagem", "MG", 621),
    ("Joinville", "SC", 616),
    ("Feira de Santana", "BA", 616),
    ("Aracaju", "SE", 602),
    ("Londrina", "PR", 555),
    ("Juiz de Fora", "MG", 540),
    ("Florianópolis", "SC", 537),
    ("Niterói", "RJ", 481),
    ("Vitória", "ES", 322),
    ("Macapá", "AP", 442),
    ("Porto Velho", "RO", 460),
    ("Boa Vista", "RR", 413),
    ("Rio Branco", "AC", 364),
    ("Palmas", "TO", 302),
];

/// Index of a municipality in `br::municipalities()`.
pub(crate) type MuniId = usize;

/// Returns the big cities resolved to municipality indexes, with cumulative weights.
fn big_cities() -> &'static (Vec<MuniId>, Vec<u32>) {
    static BIG: OnceLock<(Vec<MuniId>, Vec<u32>)> = OnceLock::new();
    BIG.get_or_init(|| {
        let all = br::municipalities();
        let mut ids = Vec::new();
        let mut cum = Vec::new();
        let mut total = 0;
        for &(name, uf, w) in BIG_CITIES {
            if let Some(i) = all.iter().position(|m| m.name == name && m.uf == uf) {
                total += w;
                ids.push(i);
                cum.push(total);
            }
        }
        (ids, cum)
    })
}

/// Municipalities whose case/accents variants round-trip through `br::canonical_municipality`.
fn foldable() -> &'static Vec<bool> {
    static OK: OnceLock<Vec<bool>> = OnceLock::new();
    OK.get_or_init(|| {
        br::municipalities()
            .iter()
            .map(|m| {
                br::canonical_municipality(&m.name, m.uf) == Some(m.name.as_str())
                    && !encoding_rs::WINDOWS_1252.encode(&m.name).2
            })
            .collect()
    })
}

/// Picks a municipality: big cities weighted by population most of the time, else any.
pub(crate) fn pick_municipality(rng: &mut ChaCha8Rng) -> MuniId {
    let all = br::municipalities();
    let (ids, cum) = big_cities();
    for _ in 0..8 {
        let id = if rng.random_bool(0.6) && !ids.is_empty() {
            let total = cum.last().copied().unwrap_or(1);
            let x = rng.random_range(0..total);
            ids[cum.partition_point(|&c| c <= x).min(ids.len() - 1)]
        } else {
            rng.random_range(0..all.len().max(1))
        };
        if foldable().get(id).copied().unwrap_or(false) {
            return id;
        }
    }
    ids.first().copied().unwrap_or(0)
}

/// Returns the official name and UF of a municipality.
pub(crate) fn municipality(id: MuniId) -> (&'static str, &'static str) {
    br::municipalities()
        .get(id)
        .map_or(("São Paulo", "SP"), |m| (m.name.as_str(), m.uf))
}

/// Draws a CEP (eight digits) inside the ranges of `uf`.
pub(crate) fn cep_in(uf: &str, rng: &mut ChaCha8Rng) -> u32 {
    let ranges: Vec<(u32, u32)> = br::cep_ranges_of(uf).collect();
    let total: u32 = ranges.iter().map(|(lo, hi)| hi - lo + 1).sum();
    if total == 0 {
        return 1_001_000;
    }
    let mut x = rng.random_range(0..total);
    let mut prefix = ranges[0].0;
    for (lo, hi) in ranges {
        let len = hi - lo + 1;
        if x < len {
            prefix = lo + x;
            break;
        }
        x -= len;
    }
    let suffix = if rng.random_bool(0.3) {
        0
    } else {
        rng.random_range(0..1000)
    };
    prefix * 1000 + suffix
}

/// Draws a valid CPF as eleven digits.
pub(crate) fn cpf(rng: &mut ChaCha8Rng) -> String {
    loop {
        let mut base = [0u8; 9];
        for d in &mut base {
            *d = rng.random_range(0..10);
        }
        if base.iter().all(|&d| d == base[0]) {
            continue;
        }
        let [d1, d2] = br::cpf_check_digits(&base);
        let mut s: String = base.iter().map(|d| char::from(b'0' + d)).collect();
        s.push(char::from(b'0' + d1));
        s.push(char::from(b'0' + d2));
        return s;
    }
}

/// Draws an E.164 phone number with a DDD of `uf` (mostly mobile, some landlines).
pub(crate) fn phone(uf: &str, rng: &mut ChaCha8Rng) -> String {
    let ddds: Vec<u8> = br::ddds_of(uf).collect();
    let ddd = if ddds.is_empty() {
        11
    } else {
        ddds[rng.random_range(0..ddds.len())]
    };
    if rng.random_bool(0.85) {
        format!("+55{ddd}9{:08}", rng.random_range(0..100_000_000u32))
    } else {
        format!(
            "+55{ddd}{}{:07}",
            rng.random_range(2..6u32),
            rng.random_range(0..10_000_000u32)
        )
    }
}

/// Draws a Brazilian full name (first name and one or two surnames).
pub(crate) fn full_name(rng: &mut ChaCha8Rng) -> (String, &'static str, &'static str) {
    let first = FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())];
    let last = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())];
    let name = if rng.random_bool(0.5) {
        let middle = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())];
        format!("{first} {middle} {last}")
    } else {
        format!("{first} {last}")
    };
    (name, first, last)
}

/// Builds a plausible lower-case ASCII e-mail address for a person.
pub(crate) fn email(first: &str, last: &str, n: u64, rng: &mut ChaCha8Rng) -> String {
    let f = br::fold_name(first).replace(' ', "");
    let l = br::fold_name(last).replace(' ', "");
    let domain = EMAIL_DOMAINS[rng.random_range(0..EMAIL_DOMAINS.len())];
    match rng.random_range(0..3) {
        0 => format!("{f}.{l}{}@{domain}", n % 1000),
        1 => format!("{f}{l}{}@{domain}", n % 97),
        _ => format!("{}{l}.{n}@{domain}", f.chars().next().unwrap_or('x')),
    }
}

/// Returns an e-mail domain other than the one `email` uses.
pub(crate) fn other_domain(email: &str) -> &'static str {
    let current = email.rsplit('@').next().unwrap_or("");
    EMAIL_DOMAINS
        .iter()
        .copied()
        .find(|d| *d != current)
        .unwrap_or("gmail.com")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::values::sub_rng;

    #[test]
    fn big_cities_are_real_municipalities() {
        assert_eq!(big_cities().0.len(), BIG_CITIES.len());
    }

    #[test]
    fn every_municipality_name_is_windows_1252() {
        let bad: Vec<_> = br::municipalities()
            .iter()
            .filter(|m| encoding_rs::WINDOWS_1252.encode(&m.name).2)
            .map(|m| m.name.clone())
            .collect();
        assert!(bad.is_empty(), "{bad:?}");
        for n in FIRST_NAMES.iter().chain(LAST_NAMES) {
            assert!(!encoding_rs::WINDOWS_1252.encode(n).2, "{n}");
        }
    }

    #[test]
    fn drawn_values_pass_the_checks() {
        let mut rng = sub_rng(7, "people-test", None, 0);
        for _ in 0..2000 {
            let id = pick_municipality(&mut rng);
            let (name, uf) = municipality(id);
            assert_eq!(br::canonical_municipality(name, uf), Some(name));
            let cep = cep_in(uf, &mut rng);
            assert!(br::cep_ranges_of(uf).any(|(lo, hi)| (lo..=hi).contains(&(cep / 1000))));
            let p = phone(uf, &mut rng);
            let ddd: u8 = p[3..5].parse().unwrap_or(0);
            assert!(br::ddds_of(uf).any(|d| d == ddd), "{p} {uf}");
            let sub = &p[5..];
            assert!(
                (sub.len() == 9 && sub.starts_with('9'))
                    || (sub.len() == 8 && matches!(sub.as_bytes()[0], b'2'..=b'5')),
                "{p}"
            );
            let c = cpf(&mut rng);
            let digits: Vec<u8> = c.bytes().map(|b| b - b'0').collect();
            let arr: [u8; 11] = digits.try_into().unwrap_or([1; 11]);
            assert!(br::cpf_is_valid(&arr), "{c}");
        }
    }
}
