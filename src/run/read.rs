//! `cleartap read`: a capture written with `--format binary` as the JSON
//! lines `--format json` writes, or as text (through the same path as
//! `cleartap tail --format text`).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::ReadArgs;
use crate::output::{binary, json_to_text, LineFormat};

pub fn run(args: &ReadArgs) -> Result<()> {
    let input: Box<dyn Read> = if args.file == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?)
    };
    let mut out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
    let result = binary::read_lines(BufReader::with_capacity(1 << 20, input), |line| match args.format {
        LineFormat::Json => out.write_all(line),
        LineFormat::Text => {
            json_to_text::write_event(&mut out, line.strip_suffix(b"\n").unwrap_or(line), args.hex)
        }
    });
    // What was read before an error is shown, then the error.
    let flushed = out.flush();
    result.with_context(|| format!("reading {}", args.file.display()))?;
    flushed.context("writing standard output")?;
    Ok(())
}
