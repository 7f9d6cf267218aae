//! The integration tests of the `shoal` binary, in one test binary: each
//! module was once a file of its own under `tests/`. One binary compiles
//! `support` once and links once, where 31 binaries did each (about 5
//! minutes of a 2-core build), and lets the tests of different files run
//! side by side. `tests/connections.rs` stays a binary of its own: its
//! 20,000 client sockets would take the open-files limit of a process
//! the other tests share.

#[allow(dead_code)]
mod support;

mod admin_api;
mod autoscale;
mod calls;
mod channel;
mod cli_format;
mod cluster;
mod control;
mod dashboard;
mod dashboard_browser;
mod density;
mod disk_full;
mod drain;
mod faults;
mod handover;
mod healing;
mod hello_js;
mod hostile;
mod instances;
mod kubia;
mod lifecycle;
mod limits;
mod manifest_errors;
mod modules;
mod newcomer;
mod output;
mod overload;
mod probes;
mod retries;
mod routes;
mod runtime;
mod tls;
