//! Assembly: each source's kernel records -> the whole records outputs
//! print. Per-source state machines, each bounded: shell lines -> commands
//! (`shell`), exec start + result (`exec`), statement start + end (`sql`),
//! and for TLS, where a connection's stream has a hole (`gaps`) and the
//! per-connection streams the HTTP decoders read (`streams`).

pub mod exec;
pub mod gaps;
pub mod shell;
pub mod sql;
pub mod streams;
