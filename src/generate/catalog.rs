//! The product catalog: OuchHungry's brands `Hungry` and `Ouch` and their competitors.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rand::RngExt;

use super::values::{fmt_ts, local_midnight, sub_rng};
use crate::br;

/// The manufacturer whose partner products the pipeline builds first.
pub const OUCHHUNGRY: &str = "OuchHungry";

/// One brand of the catalog: code prefix, name, manufacturer, segment, flavours, sizes.
struct Brand {
    prefix: &'static str,
    name: &'static str,
    manufacturer: &'static str,
    segment: &'static str,
    /// Word placed before the brand in product names (e.g. `Biscoito`), if any.
    kind: &'static str,
    flavours: &'static [&'static str],
    sizes: &'static [&'static str],
    /// Relative sales weight of each product of the brand.
    weight: u32,
}

const BRANDS: &[Brand] = &[
    Brand {
        prefix: "OHB",
        name: "Hungry",
        manufacturer: OUCHHUNGRY,
        segment: "Refrigerantes",
        kind: "Refrigerante",
        flavours: &[
            "Cola",
            "Cola Zero",
            "Guaraná",
            "Guaraná Zero",
            "Laranja",
            "Limão",
            "Uva",
        ],
        sizes: &["350ml", "600ml", "2L"],
        weight: 9,
    },
    Brand {
        prefix: "OHS",
        name: "Ouch",
        manufacturer: OUCHHUNGRY,
        segment: "Salgadinhos",
        kind: "Salgadinho",
        flavours: &[
            "Queijo",
            "Churrasco",
            "Cebola e Salsa",
            "Presunto",
            "Pimenta Mexicana",
            "Requeijão",
        ],
        sizes: &["45g", "96g", "167g"],
        weight: 9,
    },
    Brand {
        prefix: "BRB",
        name: "Borbulha",
        manufacturer: "Bebidas Aurora S.A.",
        segment: "Refrigerantes",
        kind: "Refrigerante",
        flavours: &["Cola", "Guaraná", "Laranja", "Limão", "Tônica"],
        sizes: &["350ml", "600ml", "2L"],
        weight: 8,
    },
    Brand {
        prefix: "GRC",
        name: "Guaraçu",
        manufacturer: "Amazônia Bebidas Ltda.",
        segment: "Refrigerantes",
        kind: "Refrigerante",
        flavours: &["Guaraná", "Guaraná Zero", "Açaí"],
        sizes: &["350ml", "1L", "2L"],
        weight: 7,
    },
    Brand {
        prefix: "TRP",
        name: "Tropicola",
        manufacturer: "Refrescos do Vale Ltda.",
        segment: "Refrigerantes",
        kind: "Refrigerante",
        flavours: &["Cola", "Uva", "Laranja"],
        sizes: &["350ml", "600ml", "2L"],
        weight: 5,
    },
    Brand {
        prefix: "FRV",
        name: "Frevo",
        manufacturer: "Nordeste Bebidas S.A.",
        segment: "Refrigerantes",
        kind: "Refrigerante",
        flavours: &["Cajuína", "Guaraná", "Limão"],
        sizes: &["350ml", "2L"],
        weight: 4,
    },
    Brand {
        prefix: "PMP",
        name: "Pampa",
        manufacturer: "Bebidas Gaúchas Ltda.",
        segment: "Refrigerantes",
        kind: "Refrigerante",
        flavours: &["Guaraná", "Cola", "Laranja"],
        sizes: &["600ml", "2L"],
        weight: 3,
    },
    Brand {
        prefix: "CRC",
        name: "Crocante",
        manufacturer: "Snacks Paulista S.A.",
        segment: "Salgadinhos",
        kind: "Salgadinho",
        flavours: &["Queijo", "Bacon", "Original", "Cebola"],
        sizes: &["50g", "100g", "150g"],
        weight: 7,
    },
    Brand {
        prefix: "MLH",
        name: "Milhito",
        manufacturer: "Milharal Alimentos Ltda.",
        segment: "Salgadinhos",
        kind: "Salgadinho",
        flavours: &["Queijo", "Requeijão", "Pizza"],
        sizes: &["60g", "120g"],
        weight: 5,
    },
    Brand {
        prefix: "TRX",
        name: "Torresmix",
        manufacturer: "Alimentos Gaúcha Ltda.",
        segment: "Salgadinhos",
        kind: "Torresmo",
        flavours: &["Original", "Picante"],
        sizes: &["50g", "100g"],
        weight: 3,
    },
    Brand {
        prefix: "CHS",
        name: "Chips Serra",
        manufacturer: "Serra Snacks Ltda.",
        segment: "Salgadinhos",
        kind: "Batata",
        flavours: &["Original", "Páprica", "Sal e Vinagre"],
        sizes: &["45g", "110g"],
        weight: 4,
    },
    Brand {
        prefix: "SRN",
        name: "Serrana",
        manufacturer: "Cervejaria Serrana S.A.",
        segment: "Cervejas",
        kind: "Cerveja",
        flavours: &["Pilsen", "Puro Malte", "Zero Álcool"],
        sizes: &["269ml", "350ml", "600ml"],
        weight: 6,
    },
    Brand {
        prefix: "IPE",
        name: "Ipê",
        manufacturer: "Cervejaria Ipê Ltda.",
        segment: "Cervejas",
        kind: "Cerveja",
        flavours: &["Pilsen", "IPA", "Weiss"],
        sizes: &["350ml", "600ml"],
        weight: 3,
    },
    Brand {
        prefix: "CPV",
        name: "Capivara",
        manufacturer: "Cervejaria do Rio Ltda.",
        segment: "Cervejas",
        kind: "Cerveja",
        flavours: &["Lager", "Puro Malte"],
        sizes: &["269ml", "350ml", "600ml"],
        weight: 4,
    },
    Brand {
        prefix: "CCR",
        name: "Cacau Real",
        manufacturer: "Chocolates Cacau Real S.A.",
        segment: "Chocolates",
        kind: "Chocolate",
        flavours: &["Ao Leite", "Meio Amargo", "Branco", "Com Amendoim"],
        sizes: &["25g", "90g", "150g"],
        weight: 5,
    },
    Brand {
        prefix: "BBS",
        name: "Bombom Sul",
        manufacturer: "Doces do Sul Ltda.",
        segment: "Chocolates",
        kind: "Bombom",
        flavours: &["Sortidos", "Trufa de Maracujá", "Morango"],
        sizes: &["21g", "250g"],
        weight: 3,
    },
    Brand {
        prefix: "PMR",
        name: "Pomar",
        manufacturer: "Pomar Sucos S.A.",
        segment: "Sucos",
        kind: "Suco",
        flavours: &["Laranja", "Uva", "Maçã", "Pêssego", "Manga"],
        sizes: &["200ml", "1L"],
        weight: 4,
    },
    Brand {
        prefix: "CJB",
        name: "Caju Bom",
        manufacturer: "Frutas do Nordeste Ltda.",
        segment: "Sucos",
        kind: "Suco",
        flavours: &["Caju", "Maracujá", "Goiaba"],
        sizes: &["200ml", "1L"],
        weight: 3,
    },
    Brand {
        prefix: "VVL",
        name: "Vovó Lia",
        manufacturer: "Biscoitos Vovó Lia Ltda.",
        segment: "Biscoitos",
        kind: "Biscoito",
        flavours: &[
            "Maizena",
            "Cream Cracker",
            "Água e Sal",
            "Rosquinha de Coco",
        ],
        sizes: &["200g", "400g"],
        weight: 4,
    },
    Brand {
        prefix: "MAR",
        name: "Maré",
        manufacturer: "Maré Alimentos S.A.",
        segment: "Biscoitos",
        kind: "Biscoito",
        flavours: &[
            "Recheado \"Chocolate\"",
            "Recheado \"Morango\"",
            "Wafer Limão",
            "Wafer Chocolate",
        ],
        sizes: &["140g"],
        weight: 3,
    },
];

/// Returns every brand name of the catalog in its canonical case (the cleaner's list of known brands).
pub fn known_brands() -> Vec<&'static str> {
    BRANDS.iter().map(|b| b.name).collect()
}

/// One product of the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    /// Product code `AAA-NNNNNN`.
    pub code: String,
    /// GTIN-13 with a Brazilian prefix and a valid check digit.
    pub ean: String,
    /// Display name.
    pub name: String,
    /// Brand in canonical case.
    pub brand: &'static str,
    /// Manufacturer.
    pub manufacturer: &'static str,
    /// Segment (category).
    pub segment: &'static str,
    /// Unit size such as `350ml`.
    pub unit_size: &'static str,
    /// List price in cents.
    pub price_cents: i64,
    /// Last update of the product record.
    pub updated_at: DateTime<Utc>,
    /// Relative sales weight.
    pub weight: u32,
}

/// The seeded catalog with cumulative sales weights for picking products.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Products in code order.
    pub products: Vec<Product>,
    cumulative: Vec<u64>,
}

/// Returns the typical price in cents of a unit of `size` in `segment`.
fn base_price(segment: &str, size: &str) -> i64 {
    let amount: f64 = size
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .unwrap_or(1.0);
    let litres = if size.ends_with("ml") {
        amount / 1000.0
    } else {
        amount
    };
    let grams = amount;
    let reais = match segment {
        "Refrigerantes" => 2.2 + 4.6 * litres,
        "Cervejas" => 1.5 + 14.0 * litres,
        "Sucos" => 2.0 + 8.0 * litres,
        "Salgadinhos" => 2.0 + 0.075 * grams,
        "Chocolates" => 1.5 + 0.11 * grams,
        _ => 2.5 + 0.022 * grams,
    };
    (reais * 100.0).round() as i64
}

impl Catalog {
    /// Builds the catalog for a seed as of `date` (the same records every day, update times capped to the day before).
    pub fn new(seed: u64, date: NaiveDate) -> Self {
        let mut rng = sub_rng(seed, "catalog", None, 0);
        // Records are stable across days; a day before the anchor only sees them capped.
        let anchor = local_midnight(NaiveDate::from_ymd_opt(2026, 6, 1).unwrap_or_default());
        let cap = local_midnight(date) - Duration::hours(1);
        let mut products = Vec::new();
        for (b, brand) in BRANDS.iter().enumerate() {
            let company = 1000 + (b as u32) * 373 % 9000;
            let factor = rng.random_range(0.85..1.2);
            let mut item = 0u32;
            for flavour in brand.flavours {
                for size in brand.sizes {
                    item += 1;
                    let number = (b as u32 + 1) * 100 + item;
                    let code = format!("{}-{:06}", brand.prefix, number);
                    let ean = ean13(&format!(
                        "789{company:04}{:05}",
                        rng.random_range(0..100_000u32)
                    ));
                    let name = if brand.kind.is_empty() {
                        format!("{} {flavour} {size}", brand.name)
                    } else {
                        format!("{} {} {flavour} {size}", brand.kind, brand.name)
                    };
                    let price = ((base_price(brand.segment, size) as f64) * factor).round() as i64;
                    let price = price.clamp(200, 4000);
                    let days = rng.random_range(30..900);
                    let updated_at = (anchor - Duration::days(days)
                        + Duration::seconds(rng.random_range(0..86_400)))
                    .min(cap);
                    products.push(Product {
                        code,
                        ean,
                        name,
                        brand: brand.name,
                        manufacturer: brand.manufacturer,
                        segment: brand.segment,
                        unit_size: size,
                        price_cents: price,
                        updated_at,
                        weight: brand.weight,
                    });
                }
            }
        }
        let mut cumulative = Vec::with_capacity(products.len());
        let mut total = 0u64;
        for p in &products {
            total += u64::from(p.weight);
            cumulative.push(total);
        }
        Catalog {
            products,
            cumulative,
        }
    }

    /// Picks a product index by sales weight.
    pub(crate) fn pick(&self, rng: &mut rand_chacha::ChaCha8Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1).max(1);
        let x = rng.random_range(0..total);
        self.cumulative
            .partition_point(|&c| c <= x)
            .min(self.products.len().saturating_sub(1))
    }

    /// Renders product `i` as canonical column texts in the declared column order.
    pub(crate) fn row(&self, p: &Product) -> Vec<Option<String>> {
        vec![
            Some(p.code.clone()),
            Some(p.ean.clone()),
            Some(p.name.clone()),
            Some(p.brand.to_string()),
            Some(p.manufacturer.to_string()),
            Some(p.segment.to_string()),
            Some(p.unit_size.to_string()),
            Some(fmt_ts(p.updated_at)),
        ]
    }
}

/// Appends the GTIN-13 check digit to twelve digits.
pub(crate) fn ean13(twelve: &str) -> String {
    let mut base = [0u8; 12];
    for (d, b) in base.iter_mut().zip(twelve.bytes()) {
        *d = b.wrapping_sub(b'0') % 10;
    }
    let check = br::gtin13_check_digit(&base);
    let mut s: String = base.iter().map(|d| char::from(b'0' + d)).collect();
    s.push(char::from(b'0' + check));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> Catalog {
        Catalog::new(
            42,
            NaiveDate::from_ymd_opt(2026, 11, 27).unwrap_or_default(),
        )
    }

    #[test]
    fn catalog_is_realistic() {
        let c = cat();
        assert!(
            (150..=300).contains(&c.products.len()),
            "{}",
            c.products.len()
        );
        let re = regex::Regex::new(r"^[A-Z]{3}-\d{6}$").unwrap_or_else(|e| panic!("{e}"));
        let mut codes = std::collections::BTreeSet::new();
        for p in &c.products {
            assert!(re.is_match(&p.code), "{}", p.code);
            assert!(codes.insert(p.code.clone()), "duplicate {}", p.code);
            let d: Vec<u8> = p.ean.bytes().map(|b| b - b'0').collect();
            let arr: [u8; 13] = d.try_into().unwrap_or([0; 13]);
            assert!(
                p.ean.starts_with("789") && br::gtin13_is_valid(&arr),
                "{}",
                p.ean
            );
            assert!(
                (200..=4000).contains(&p.price_cents),
                "{} {}",
                p.name,
                p.price_cents
            );
        }
        assert_eq!(c.products[0].code, "OHB-000101");
        for seg in ["Refrigerantes", "Salgadinhos"] {
            let others: std::collections::BTreeSet<_> = c
                .products
                .iter()
                .filter(|p| p.segment == seg && p.manufacturer != OUCHHUNGRY)
                .map(|p| p.brand)
                .collect();
            assert!(others.len() >= 4, "{seg}: {others:?}");
        }
    }

    #[test]
    fn catalog_is_deterministic() {
        assert_eq!(cat().products, cat().products);
    }
}
