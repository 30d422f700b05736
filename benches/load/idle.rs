//! `idle`: not written yet.

use crate::common::{Env, Opts};
use crate::report::Report;

pub const WORKER: &str = "idle-worker";

pub async fn run(_env: &Env, _report: &mut Report) {}

pub fn worker_main(_opts: &Opts) {}
