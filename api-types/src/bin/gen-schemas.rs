//! Writes the JSON Schemas of every kind to `manifests/schemas/`, removing
//! stale `.json` files there. Run: `cargo run -p corral-api-types --bin gen-schemas`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "manifests", "schemas"]
        .iter()
        .collect();
    match run(&dir) {
        Ok(n) => {
            println!("wrote {n} schemas to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-schemas: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &std::path::Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let schemas = corral_api_types::json_schemas();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let stale = name.ends_with(".json") && !schemas.iter().any(|(n, _)| n == name);
        if stale {
            std::fs::remove_file(&path)?;
        }
    }
    for (name, text) in &schemas {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(schemas.len())
}
