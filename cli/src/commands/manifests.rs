//! Reading manifests for `apply`, `diff` and `delete -f`: files,
//! directories (recursively, `*.yaml`/`*.yml`/`*.json`, sorted) and `-`
//! for stdin, parsed with [`parse_manifests`]. Every problem in every file
//! is reported before anything is sent.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Result;
use corral_api_types::{parse_manifests, AnyObject, Scope, KINDS};

use super::reported;

/// Largest manifest file (or stdin) read, in bytes.
pub const MAX_FILE_BYTES: u64 = 8 << 20;
/// Most objects one `apply`/`diff`/`delete -f` handles.
pub const MAX_OBJECTS: usize = 10_000;

/// Reads at most [`MAX_FILE_BYTES`] of text; more is an error naming the
/// limit, never an unbounded read.
fn read_bounded(r: impl Read, source: &str) -> std::result::Result<String, String> {
    let mut text = String::new();
    match r.take(MAX_FILE_BYTES + 1).read_to_string(&mut text) {
        Ok(n) if n as u64 > MAX_FILE_BYTES => Err(format!(
            "{source}: larger than {} MiB; split it into several files",
            MAX_FILE_BYTES >> 20
        )),
        Ok(_) => Ok(text),
        Err(e) => Err(format!("{source}: cannot read: {e}")),
    }
}

/// One object read from a manifest.
pub struct Manifest {
    /// The file it came from (`<stdin>` for `-`).
    pub source: String,
    pub object: AnyObject,
}

impl Manifest {
    /// Position of the object's kind in [`KINDS`] (apply order).
    pub fn kind_rank(&self) -> usize {
        let kind = self.object.kind();
        KINDS
            .iter()
            .position(|k| k.kind == kind)
            .unwrap_or(KINDS.len())
    }

    /// The project the object goes to: its own, else `default_project`;
    /// `None` for cluster-scoped kinds.
    pub fn project(&self, default_project: &str) -> Option<String> {
        match self.object.scope() {
            Scope::Cluster => None,
            Scope::Project if !self.object.project().is_empty() => {
                Some(self.object.project().to_string())
            }
            Scope::Project => Some(default_project.to_string()),
        }
    }
}

fn is_manifest_file(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("yaml" | "yml" | "json")
    )
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(format!("{}: cannot read directory: {e}", dir.display()));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            walk(&p, out, errors);
        } else if is_manifest_file(&p) {
            out.push(p);
        }
    }
}

/// Reads and parses every manifest named by `-f` arguments. All errors
/// are printed (`error: FILE: ...`); then the call fails with exit code 2.
pub fn read(paths: &[String]) -> Result<Vec<Manifest>> {
    let mut errors: Vec<String> = Vec::new();
    let mut sources: Vec<(String, String)> = Vec::new();
    let mut stdin_read = false;
    for arg in paths {
        if arg == "-" {
            if stdin_read {
                continue;
            }
            stdin_read = true;
            match read_bounded(std::io::stdin(), "<stdin>") {
                Ok(text) => sources.push(("<stdin>".into(), text)),
                Err(e) => errors.push(e),
            }
            continue;
        }
        let path = Path::new(arg);
        let files = if path.is_dir() {
            let mut files = Vec::new();
            walk(path, &mut files, &mut errors);
            files
        } else if path.exists() {
            vec![path.to_path_buf()]
        } else {
            errors.push(format!("the path {arg:?} does not exist"));
            continue;
        };
        for f in files {
            let name = f.display().to_string();
            match std::fs::File::open(&f)
                .map_err(|e| format!("{name}: cannot read: {e}"))
                .and_then(|file| read_bounded(file, &name))
            {
                Ok(text) => sources.push((name, text)),
                Err(e) => errors.push(e),
            }
        }
    }
    let mut out = Vec::new();
    for (source, text) in &sources {
        match parse_manifests(source, text) {
            Ok(objects) => out.extend(objects.into_iter().map(|object| Manifest {
                source: source.clone(),
                object,
            })),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if out.len() > MAX_OBJECTS {
        errors.push(format!(
            "{} objects in the manifests; at most {MAX_OBJECTS} are handled at once: apply them in parts",
            out.len()
        ));
    }
    // The same object twice would be applied twice, the second write
    // silently winning.
    let mut seen = HashSet::new();
    for m in &out {
        let key = (
            m.object.kind(),
            m.object.project().to_string(),
            m.object.name().to_string(),
        );
        if !seen.insert(key) {
            errors.push(format!(
                "{}: {} appears more than once in the manifests",
                m.source,
                m.object.display_name()
            ));
        }
    }
    if out.is_empty() && errors.is_empty() {
        errors.push(format!(
            "no objects found in {} (looked for *.yaml, *.yml, *.json)",
            paths.join(", ")
        ));
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        return Err(reported(2));
    }
    Ok(out)
}

/// Sorts manifests into apply order (stable: file order within a kind).
pub fn sort_for_apply(manifests: &mut [Manifest]) {
    manifests.sort_by_key(Manifest::kind_rank);
}
