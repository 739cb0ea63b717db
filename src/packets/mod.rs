//! Packets from the TC classifier: which ones the user's filter keeps,
//! what flow and process they belong to, and when they may be written
//! (after the secrets that decrypt them).

pub mod capture;
pub mod filter;
pub mod frame;
