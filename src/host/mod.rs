//! The host's own users table (as `[source]` in the settings describes
//! it, checked and read in keyset pages by `table`): the backfill of
//! historical accounts, and the triggers that write the outbox for hosts
//! that cannot. Each in private files; what `cli` and `demo` run is
//! re-exported here.

mod backfill;
mod table;
mod triggers;

pub use backfill::{
    Api as ForegroundApi, BackfillOptions, Mode, OutputFormat, Resend, Summary, run as run_backfill,
};
pub use triggers::install_triggers;
