//! Multi-row inserts, as each engine takes them fastest.
//!
//! SQLite gets multi-row `VALUES` with anonymous parameters ([`bulk_sql`]). PostgreSQL gets
//! the rows as one `jsonb` array parameter: the statement text is then the same whatever the number of
//! rows, so each connection prepares it once. As `VALUES` lists, every batch size was a
//! statement of its own (hundreds of parameters), parsed and planned again as it fell out of
//! the connection's statement cache.

use super::{bulk_sql, placeholders, StateError};
use serde::Serialize;
use sqlx::AnyConnection;

/// Parameters per `VALUES` statement, under every backend's bind limit.
const MAX_BINDS: usize = 900;

/// One value of an inserted row.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(untagged)]
pub(super) enum Cell<'a> {
    Text(&'a str),
    Int(Option<i64>),
}

/// `INSERT INTO table (columns)`, the columns' PostgreSQL types and the `ON CONFLICT` clause.
pub(super) struct BulkInsert<'a, const N: usize> {
    pub table: &'a str,
    /// Comma-separated, N of them.
    pub columns: &'a str,
    pub types: [&'a str; N],
    pub conflict: &'a str,
    pub op: &'static str,
}

impl<const N: usize> BulkInsert<'_, N> {
    /// Inserts `rows` in their order (the lock order, on PostgreSQL); returns how many were new.
    pub async fn run(
        &self,
        conn: &mut AnyConnection,
        rows: &[[Cell<'_>; N]],
    ) -> Result<u64, StateError> {
        if rows.is_empty() {
            return Ok(0);
        }
        if conn.backend_name().eq_ignore_ascii_case("postgresql") {
            self.as_json(conn, rows).await
        } else {
            self.as_values(conn, rows).await
        }
    }

    async fn as_json(
        &self,
        conn: &mut AnyConnection,
        rows: &[[Cell<'_>; N]],
    ) -> Result<u64, StateError> {
        let rows: Vec<&[Cell<'_>]> = rows.iter().map(|r| &r[..]).collect();
        let json = serde_json::to_string(&rows).map_err(|e| StateError::InvalidInput {
            op: self.op,
            reason: format!("rows not encodable as JSON: {e}"),
        })?;
        let done = sqlx::query(&self.json_sql())
            .bind(json)
            .execute(conn)
            .await
            .map_err(StateError::op(self.op))?;
        Ok(done.rows_affected())
    }

    /// `jsonb_array_elements` yields the rows in array order; jsonb is parsed once, where each
    /// `->>` on `json` would parse the row again.
    fn json_sql(&self) -> String {
        let columns: Vec<String> = self
            .types
            .iter()
            .enumerate()
            .map(|(i, ty)| format!("(r->>{i})::{ty}"))
            .collect();
        format!(
            "INSERT INTO {} ({}) SELECT {} FROM jsonb_array_elements($1::jsonb) AS r {}",
            self.table,
            self.columns,
            columns.join(", "),
            self.conflict
        )
    }

    async fn as_values(
        &self,
        conn: &mut AnyConnection,
        rows: &[[Cell<'_>; N]],
    ) -> Result<u64, StateError> {
        let mut inserted = 0;
        for chunk in rows.chunks((MAX_BINDS / N.max(1)).max(1)) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", placeholders(1 + N * i, N)))
                .collect();
            let sql = format!(
                "INSERT INTO {} ({}) VALUES {} {}",
                self.table,
                self.columns,
                values.join(", "),
                self.conflict
            );
            let sql = bulk_sql(conn, sql);
            let mut query = sqlx::query(&sql);
            for cell in chunk.iter().flatten() {
                query = match *cell {
                    Cell::Text(s) => query.bind(s),
                    Cell::Int(n) => query.bind(n),
                };
            }
            let done = query
                .execute(&mut *conn)
                .await
                .map_err(StateError::op(self.op))?;
            inserted += done.rows_affected();
        }
        Ok(inserted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_reads_each_column_from_the_json_row_by_position() {
        let insert = BulkInsert {
            table: "t",
            columns: "a, b",
            types: ["text", "bigint"],
            conflict: "ON CONFLICT (a) DO NOTHING",
            op: "t_insert",
        };
        assert_eq!(
            insert.json_sql(),
            "INSERT INTO t (a, b) SELECT (r->>0)::text, (r->>1)::bigint \
             FROM jsonb_array_elements($1::jsonb) AS r ON CONFLICT (a) DO NOTHING"
        );
        let rows = [
            [Cell::Text("x\"\n"), Cell::Int(None)],
            [Cell::Text("y"), Cell::Int(Some(-3))],
        ];
        assert_eq!(
            serde_json::to_string(&rows).expect("json"),
            r#"[["x\"\n",null],["y",-3]]"#
        );
    }
}
