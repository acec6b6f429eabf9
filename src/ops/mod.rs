//! Operating the worker: the HTTP endpoints of `user-sync run` (`/healthz`,
//! `/readyz`, `/metrics`), the operator API and its console (`console`),
//! Prometheus metrics, the `status`/`conflicts` reports, and retention's
//! passes (`retention`). Each in a private file; what `app` and `cli` use is re-exported
//! here.

mod console;
mod erasures;
mod http;
mod metrics;
mod readiness;
mod reconcile;
mod retention;
mod status;

pub use console::Console;
pub use erasures::{
    EraseEnd, erase, erasures_csv, parse_ids, render_pending, render_records, watch_erasures,
};
pub use http::{OpsState, bind, serve};
pub use metrics::recorder;
pub use readiness::{ApiCheck, ApiReadiness};
pub use reconcile::{Action, Done, FullNameFix, Reconciler, Refused, Resolve, recheck_conflicts};
pub use retention::{PassOutcome, Removed, run_pass, run_retention};
pub use status::{
    ListFormat, describe_done, describe_pause, mask_username, render_conflicts, render_events,
    render_user, status_table, user_json,
};
