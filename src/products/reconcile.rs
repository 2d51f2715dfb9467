//! The monthly reconciliation guardrail: the month's daily lines still completed must add up to
//! the monthly file's net revenue, merged and dropped cells included; a mismatch holds the file.
//!
//! The daily side is summed the daily way in the month's pass ([`super::month_lines`]): batch D's
//! lines sold on D, the partner's products per batch D's snapshot, kept when the line's latest
//! version is still completed and in M; the monthly side is Σ `net_revenue` of the rows plus
//! what small-cell suppression dropped. A line
//! that reached the monthly data without ever being in its day's batch, a product that changed
//! brand within the month or an aggregation bug all show up as a mismatch.

use std::collections::{BTreeMap, BTreeSet};

use super::brands::BrandTable;
use super::contract::Contract;
use super::monthly::MonthlyTable;
use crate::events::{Alert, Severity};

/// The reconciliation failed or did not hold.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The sums differ: the file is held.
    #[error(
        "reconciliation held {partner} monthly {month}: daily lines sum {daily_cents} cents, monthly file {monthly_cents} cents"
    )]
    Mismatch {
        /// The partner.
        partner: String,
        /// The month.
        month: String,
        /// Σ daily net_amount of lines still completed.
        daily_cents: i128,
        /// Σ monthly net_revenue with merged and dropped cells.
        monthly_cents: i128,
        /// The alert raised.
        alert: Box<Alert>,
    },
    /// A country row of the brand view does not add up to the monthly aggregate: the brand view
    /// is held.
    #[error("reconciliation held {partner} monthly_brands {month}: brand {brand} {figures}")]
    BrandMismatch {
        /// The partner.
        partner: String,
        /// The month.
        month: String,
        /// The brand (and its segment, after a `/`).
        brand: String,
        /// The country row's units and net revenue (cents) against the monthly file's, dropped
        /// cells included (decimal text: the sums are 128-bit).
        figures: String,
        /// The alert raised.
        alert: Box<Alert>,
    },
}

/// Both sides of a reconciliation that held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconciliation {
    /// Σ daily net_amount of lines still completed, cents (exact).
    pub daily_cents: i128,
    /// Σ monthly net_revenue including dropped cells, cents (exact).
    pub monthly_cents: i128,
}

/// A sum of cents as JSON: a number when it fits 64 bits, else its decimal text.
fn json_cents(v: i128) -> serde_json::Value {
    i64::try_from(v).map_or_else(|_| v.to_string().into(), Into::into)
}

/// Checks a monthly table against the daily lines of its month.
pub fn check(contract: &Contract, table: &MonthlyTable) -> Result<Reconciliation, ReconcileError> {
    let daily_cents = table.lines.daily_cents;
    let monthly_cents = table
        .rows
        .iter()
        .map(|r| i128::from(r.net_revenue))
        .sum::<i128>()
        + i128::from(table.dropped_net_revenue);
    if daily_cents == monthly_cents {
        return Ok(Reconciliation {
            daily_cents,
            monthly_cents,
        });
    }
    let alert = Alert::new(
        Severity::Critical,
        "reconciliation",
        (&contract.name, "monthly", &table.month),
        "net_revenue",
        format!(
            "arquivo mensal de {} para {} retido: a receita líquida das linhas diárias e a do mês diferem",
            contract.name, table.month
        ),
    )
    .with("daily_cents", json_cents(daily_cents))
    .with("monthly_cents", json_cents(monthly_cents))
    .with("difference_cents", json_cents(monthly_cents - daily_cents))
    .with(
        "action",
        "compare os lotes do mês (linhas atrasadas, mudanças de produto), corrija e reconstrua o mês",
    );
    alert.log();
    Err(ReconcileError::Mismatch {
        partner: contract.name.clone(),
        month: table.month.clone(),
        daily_cents,
        monthly_cents,
        alert: Box::new(alert),
    })
}

/// Checks that every brand's `country` row has the units and net revenue of the monthly
/// aggregate's rows of that brand, merged and dropped cells included (and that no brand is in
/// one file only).
pub fn check_brands(
    contract: &Contract,
    monthly: &MonthlyTable,
    brands: &BrandTable,
) -> Result<(), ReconcileError> {
    let mut want: BTreeMap<(String, String), (i128, i128)> = monthly.dropped_by_brand.clone();
    for r in &monthly.rows {
        let e = want
            .entry((r.product.brand.clone(), r.product.segment.clone()))
            .or_default();
        e.0 += i128::from(r.units_sold);
        e.1 += i128::from(r.net_revenue);
    }
    let mut got: BTreeMap<(String, String), (i128, i128)> = BTreeMap::new();
    for r in brands.country() {
        let e = got.entry((r.brand.clone(), r.segment.clone())).or_default();
        e.0 += i128::from(r.units_sold);
        e.1 += i128::from(r.net_revenue);
    }
    let keys: BTreeSet<&(String, String)> = want.keys().chain(got.keys()).collect();
    for key in keys {
        let g = got.get(key).copied().unwrap_or_default();
        let w = want.get(key).copied().unwrap_or_default();
        if g == w {
            continue;
        }
        let brand = format!("{}/{}", key.0, key.1);
        let alert = Alert::new(
            Severity::Critical,
            "reconciliation",
            (&contract.name, "monthly_brands", &brands.month),
            "net_revenue",
            format!(
                "visão de marcas de {} para {} retida: a linha country de {brand} difere do agregado mensal",
                contract.name, brands.month
            ),
        )
        .with("brand", brand.as_str())
        .with("brand_units", g.0.to_string())
        .with("brand_cents", g.1.to_string())
        .with("monthly_units", w.0.to_string())
        .with("monthly_cents", w.1.to_string())
        .with(
            "action",
            "reconstrua o mês; se persistir, compare a visão de marcas e o agregado mensal do mês",
        );
        alert.log();
        return Err(ReconcileError::BrandMismatch {
            partner: contract.name.clone(),
            month: brands.month.clone(),
            brand,
            figures: format!(
                "country row {} units, {} cents; monthly file {} units, {} cents",
                g.0, g.1, w.0, w.1
            ),
            alert: Box::new(alert),
        });
    }
    Ok(())
}
