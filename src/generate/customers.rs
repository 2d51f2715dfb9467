//! The customer snapshot: one customer per index, derived from the seed alone (random access).

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rand::RngExt;

use super::people::{self, MuniId};
use super::schema::Row;
use super::values::{fmt_cep, fmt_ts, local_midnight, sub_rng};

/// Returns the customer id of index `i` (`C-000001` for index 0).
pub(crate) fn customer_id(i: u64) -> String {
    format!("C-{:06}", i + 1)
}

/// Returns where customer `i` lives: municipality and CEP digits.
pub(crate) fn location(seed: u64, i: u64) -> (MuniId, u32) {
    let mut rng = sub_rng(seed, "customer-location", None, i);
    let muni = people::pick_municipality(&mut rng);
    let (_, uf) = people::municipality(muni);
    (muni, people::cep_in(uf, &mut rng))
}

/// Renders customer `i` as canonical column texts, as of day `date`.
pub(crate) fn row(seed: u64, i: u64, date: NaiveDate) -> Row {
    let (muni, cep) = location(seed, i);
    let (city, uf) = people::municipality(muni);
    let mut rng = sub_rng(seed, "customer", None, i);
    let (name, first, last) = people::full_name(&mut rng);
    let email = people::email(first, last, i, &mut rng);
    let cpf = people::cpf(&mut rng);
    let phone = people::phone(uf, &mut rng);
    let birth = NaiveDate::from_ymd_opt(1940, 1, 1).unwrap_or_default()
        + Duration::days(rng.random_range(0..(68 * 365)));
    let anchor = NaiveDate::from_ymd_opt(2015, 1, 1).unwrap_or_default();
    let created: DateTime<Utc> = local_midnight(anchor)
        + Duration::days(rng.random_range(0..4000))
        + Duration::seconds(rng.random_range(0..86_400));
    let updated = created
        + Duration::days(rng.random_range(0..700))
        + Duration::seconds(rng.random_range(0..86_400));
    let cap = local_midnight(date) - Duration::hours(1);
    let created = created.min(cap);
    let updated = updated.min(cap).max(created);
    vec![
        Some(customer_id(i)),
        Some(name),
        Some(email),
        Some(cpf),
        Some(phone),
        Some(birth.format("%Y-%m-%d").to_string()),
        Some(fmt_cep(cep)),
        Some(city.to_string()),
        Some(uf.to_string()),
        Some(fmt_ts(created)),
        Some(fmt_ts(updated)),
    ]
}
