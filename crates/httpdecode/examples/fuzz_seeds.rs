//! Writes the HPACK amplification seeds of the `hpack` and `http2` fuzz
//! targets into their corpora: `cargo run -p httpdecode --example
//! fuzz_seeds [DIR]` (DIR defaults to crates/httpdecode/fuzz/corpus, where
//! `cargo fuzz run` looks). Fuzz them with `-max_len=300000`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus");
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| default.into()));
    for (target, seeds) in
        [("hpack", httpdecode::fuzz_hpack_seeds()), ("http2", httpdecode::fuzz_http2_seeds())]
    {
        let sub = dir.join(target);
        std::fs::create_dir_all(&sub)?;
        for (name, bytes) in seeds {
            let path = sub.join(format!("amplification-{name}"));
            std::fs::write(&path, &bytes)?;
            println!("{} ({} bytes)", path.display(), bytes.len());
        }
    }
    Ok(())
}
