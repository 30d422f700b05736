//! `recovery`: not written yet.

use crate::common::Env;
use crate::report::Report;

pub async fn run(_env: &Env, _report: &mut Report) {}
