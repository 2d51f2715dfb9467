//! The three extract tables as the spec declares them: columns, types, null and invalid rules.

use serde::{Deserialize, Serialize};

/// One of the three extract tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Order lines sold on the day, plus late corrections.
    Transactions,
    /// The product snapshot.
    Products,
    /// The customer snapshot.
    Customers,
}

impl Table {
    /// All tables in the order the generator writes them.
    pub const ALL: [Table; 3] = [Table::Transactions, Table::Products, Table::Customers];

    /// Returns the table name used in object names and reports.
    pub fn name(self) -> &'static str {
        match self {
            Table::Transactions => "transactions",
            Table::Products => "products",
            Table::Customers => "customers",
        }
    }

    /// Returns the declared columns of the table, in the spec's order.
    pub fn columns(self) -> &'static [Col] {
        match self {
            Table::Transactions => TRANSACTIONS,
            Table::Products => PRODUCTS,
            Table::Customers => CUSTOMERS,
        }
    }

    /// Returns the index of the key column.
    pub fn key(self) -> usize {
        0
    }

    /// Returns the index of the `updated_at` column.
    pub fn updated_at(self) -> usize {
        self.columns().len() - 1
    }

    /// Returns the index of the column named `name`, if declared.
    pub fn col(self, name: &str) -> Option<usize> {
        self.columns().iter().position(|c| c.name == name)
    }
}

/// What a column holds, which decides its formats and its invalid values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// `TX-…` line identifier, trimmed and upper-cased.
    TxId,
    /// A plain identifier (`OR-…`, `C-…`).
    Id,
    /// Free text.
    Text,
    /// `AAA-NNNNNN`.
    ProductCode,
    /// Integer > 0.
    Quantity,
    /// BRL amount > 0.
    Price,
    /// BRL amount ≥ 0, null → 0.
    Discount,
    /// `completed`, `cancelled` or `refunded`.
    Status,
    /// A UTC timestamp.
    Timestamp,
    /// `NNNNN-NNN`.
    Cep,
    /// A municipality name.
    City,
    /// A federative unit code.
    Uf,
    /// GTIN-13.
    Ean,
    /// A brand, canonical case from the known brands.
    Brand,
    /// Lower-case e-mail address.
    Email,
    /// Eleven CPF digits.
    Cpf,
    /// E.164 phone number.
    Phone,
    /// A calendar date.
    BirthDate,
}

impl Ty {
    /// Returns true when an unreadable value quarantines the row (else it is set to null).
    pub fn invalid_quarantines(self) -> bool {
        matches!(
            self,
            Ty::ProductCode
                | Ty::Quantity
                | Ty::Price
                | Ty::Discount
                | Ty::Status
                | Ty::Timestamp
                | Ty::Uf
        )
    }
}

/// How a column treats a null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A null quarantines the row (`missing_<column>`).
    Required,
    /// A null is kept as null.
    Optional,
    /// A null becomes zero (`discount`).
    DefaultZero,
    /// Not constrained by the spec (`customers.created_at`): the generator injects formats only.
    Unspecified,
}

/// One declared column.
#[derive(Debug, Clone, Copy)]
pub struct Col {
    /// Column name as declared.
    pub name: &'static str,
    /// Value type.
    pub ty: Ty,
    /// Null rule.
    pub need: Need,
}

const fn c(name: &'static str, ty: Ty, need: Need) -> Col {
    Col { name, ty, need }
}

const TRANSACTIONS: &[Col] = &[
    c("transaction_id", Ty::TxId, Need::Required),
    c("order_id", Ty::Id, Need::Required),
    c("customer_id", Ty::Id, Need::Required),
    c("product_code", Ty::ProductCode, Need::Required),
    c("quantity", Ty::Quantity, Need::Required),
    c("unit_price", Ty::Price, Need::Required),
    c("discount", Ty::Discount, Need::DefaultZero),
    c("status", Ty::Status, Need::Required),
    c("sold_at", Ty::Timestamp, Need::Required),
    c("delivery_cep", Ty::Cep, Need::Optional),
    c("city", Ty::City, Need::Required),
    c("uf", Ty::Uf, Need::Required),
    c("updated_at", Ty::Timestamp, Need::Optional),
];

const PRODUCTS: &[Col] = &[
    c("product_code", Ty::ProductCode, Need::Required),
    c("ean", Ty::Ean, Need::Optional),
    c("name", Ty::Text, Need::Required),
    c("brand", Ty::Brand, Need::Required),
    c("manufacturer", Ty::Text, Need::Required),
    c("segment", Ty::Text, Need::Required),
    c("unit_size", Ty::Text, Need::Optional),
    c("updated_at", Ty::Timestamp, Need::Optional),
];

const CUSTOMERS: &[Col] = &[
    c("customer_id", Ty::Id, Need::Required),
    c("name", Ty::Text, Need::Optional),
    c("email", Ty::Email, Need::Optional),
    c("cpf", Ty::Cpf, Need::Optional),
    c("phone", Ty::Phone, Need::Optional),
    c("birth_date", Ty::BirthDate, Need::Optional),
    c("cep", Ty::Cep, Need::Optional),
    c("city", Ty::City, Need::Required),
    c("uf", Ty::Uf, Need::Required),
    c("created_at", Ty::Timestamp, Need::Unspecified),
    c("updated_at", Ty::Timestamp, Need::Optional),
];

/// Canonical column texts of one row, in declared order (`None` is null).
pub type Row = Vec<Option<String>>;
