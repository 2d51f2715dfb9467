//! Object names the worker writes in the curated, ops and products buckets.

use chrono::NaiveDate;

/// The suffixes of a staged part's objects; the summary is written last (it marks "staged").
pub const STAGED_SUFFIXES: [&str; 3] = ["data.arrow", "quarantine.arrow", "summary.json"];

/// `staging/dt=<D>/<table>/<file>@<generation>.<suffix>` in the curated bucket.
pub fn staged(dt: NaiveDate, object: &str, generation: i64, suffix: &str) -> String {
    let mut parts = object.rsplit('/');
    let file = parts.next().unwrap_or(object);
    let _dt_folder = parts.next();
    let table = parts.next().unwrap_or("unknown");
    format!("staging/dt={dt}/{table}/{file}@{generation}.{suffix}")
}

/// `extracts/dt=<D>/_SUCCESS` in the raw bucket.
pub fn marker(dt: NaiveDate) -> String {
    format!("extracts/dt={dt}/_SUCCESS")
}

/// `claims/batch/dt=<D>/<batch version>.json` in the ops bucket.
pub fn batch_claim(dt: NaiveDate, version: &str) -> String {
    format!("claims/batch/dt={dt}/{version}.json")
}

/// `claims/batch/dt=<D>/<batch version>.done.json`: the batch step finished.
pub fn batch_done(dt: NaiveDate, version: &str) -> String {
    format!("claims/batch/dt={dt}/{version}.done.json")
}

/// `claims/unclaimed/dt=<D>/<step key>.json`: a ready batch version the tick saw unclaimed.
pub fn unclaimed(dt: NaiveDate, key: &str) -> String {
    format!("claims/unclaimed/dt={dt}/{key}.json")
}

/// The day and step key of a batch claim's name (`None` for a done marker or another name).
pub fn parse_batch_claim(name: &str) -> Option<(NaiveDate, &str)> {
    let rest = name.strip_prefix("claims/batch/dt=")?;
    let (day, file) = rest.split_once('/')?;
    let key = file.strip_suffix(".json")?;
    if key.ends_with(".done") || key.is_empty() {
        return None;
    }
    Some((day.parse().ok()?, key))
}

/// `deliveries/<delivery id>.json` in the ops bucket: the delivery request was published.
pub fn delivery_published(delivery_id: &str) -> String {
    format!("deliveries/{delivery_id}.json")
}

/// `<partner>/<daily|monthly>/<delivery id>/<file>` in the products bucket.
pub fn product_file(partner: &str, product: &str, delivery_id: &str, file: &str) -> String {
    format!("{partner}/{product}/{delivery_id}/{file}")
}

/// `tables/<daily|monthly>/dt=<period>/partner=<partner>/<file>` in the products bucket: the
/// latest version of each period, read by the BigQuery external tables (terraform/bigquery.tf).
pub fn product_table_file(partner: &str, product: &str, period: &str, file: &str) -> String {
    format!("tables/{product}/dt={period}/partner={partner}/{file}")
}

/// `gs://<bucket>/<name>`.
pub fn uri(bucket: &str, name: &str) -> String {
    format!("gs://{bucket}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_names_keep_table_file_and_generation() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        assert_eq!(
            staged(
                d,
                "extracts/transactions/dt=2026-11-27/part-000.csv.gz",
                17,
                "summary.json"
            ),
            "staging/dt=2026-11-27/transactions/part-000.csv.gz@17.summary.json"
        );
        assert_eq!(
            batch_claim(d, "5-ab"),
            "claims/batch/dt=2026-11-27/5-ab.json"
        );
        assert_eq!(
            batch_done(d, "5-ab"),
            "claims/batch/dt=2026-11-27/5-ab.done.json"
        );
        assert_eq!(
            parse_batch_claim(&batch_claim(d, "5-ab.replay-x")),
            Some((d, "5-ab.replay-x"))
        );
        assert_eq!(parse_batch_claim(&batch_done(d, "5-ab")), None);
        assert_eq!(parse_batch_claim("claims/monthly/acme/2026-11.json"), None);
    }
}
