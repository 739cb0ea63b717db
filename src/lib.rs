//! cleartap as a library: the binary (`src/main.rs`) and the fuzz targets
//! (`fuzz/`) use it. Data flows one way: probes (`bpf/`, `sources`) ->
//! events -> assembly (`assembly`, enriched by `context`) -> decoders ->
//! outputs.

pub mod agent;
pub mod assembly;
pub mod bpf;
pub mod cli;
pub mod context;
pub mod discover;
pub mod events;
pub mod kernel;
pub mod output;
pub mod packets;
pub mod run;
pub mod sources;
