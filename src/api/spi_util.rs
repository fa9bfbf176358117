//! Small SPI helpers shared by the SQL layer.
use crate::error::OrRaise;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiHeapTupleData;

/// `args![a, b]` builds the argument slice of an SPI call from Rust values.
macro_rules! args {
    ($($e:expr),* $(,)?) => { [$(::pgrx::datum::DatumWithOid::from($e)),*] };
}
pub(crate) use args;

/// Runs a read-only query and maps each row.
pub fn query_rows<T>(
    query: &str,
    args: &[DatumWithOid],
    f: impl Fn(&SpiHeapTupleData) -> T,
) -> Vec<T> {
    Spi::connect(|client| {
        let table = client.select(query, None, args).or_raise("query");
        table.map(|row| f(&row)).collect()
    })
}
