//! Prints the group-commit statement the server prepares for its sends
//! (`messages::SEND_BATCH_SQL`), so that `scripts/statement-cpu.sh` can
//! time the very text, and variants edited from it, in PostgreSQL alone.
//!
//!     cargo run --release --example send_batch_sql > statement.sql

fn main() {
    println!("{}", chatapp::messages::SEND_BATCH_SQL.as_str());
}
