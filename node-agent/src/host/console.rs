//! A guest's serial console log as the agent follows it: how long it is
//! (a boot's mark), and whether the guest has printed its ready line
//! after its last boot. Reads files only; virtlogd writes them.

use std::path::Path;

/// What a booted guest prints (see [`guest_ready`]).
const READY_MARKS: [&[u8]; 2] = [b"corral-guest: ready", b" login: "];

/// Whether a guest has finished booting, judged from its console: a
/// readiness line after the last kernel banner.
pub fn guest_ready(console: &[u8]) -> bool {
    let text = String::from_utf8_lossy(console);
    let boot = ["Linux version ", "corral-guest: boot"]
        .iter()
        .filter_map(|m| text.rfind(m))
        .max();
    let ready = ["corral-guest: ready", " login: "]
        .iter()
        .filter_map(|m| text.rfind(m))
        .max();
    match (boot, ready) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(b), Some(r)) => r > b,
    }
}

/// The log's length now (0 if there is none yet).
pub fn console_len(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// Searches `log` from byte `from` (less a mark's length, so a mark split
/// across reads is found) for a ready mark. Answers whether one was found
/// and how far the log was read.
pub fn read_for_ready(log: &Path, from: u64) -> (bool, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else {
        return (false, from);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // virtlogd rotated the log (or it was replaced): start over.
    let from = if len < from { 0 } else { from };
    let overlap = READY_MARKS.iter().map(|m| m.len()).max().unwrap_or(0) as u64;
    let start = from.saturating_sub(overlap);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return (false, from);
    }
    let mut buf = Vec::with_capacity((len - start.min(len)) as usize);
    if f.take(len - start.min(len)).read_to_end(&mut buf).is_err() {
        return (false, from);
    }
    let found = READY_MARKS
        .iter()
        .any(|m| buf.windows(m.len()).any(|w| w == *m));
    (found, start + buf.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_is_judged_after_the_last_boot() {
        assert!(!guest_ready(b""));
        assert!(!guest_ready(b"corral-guest: boot\n"));
        assert!(guest_ready(b"corral-guest: boot\ncorral-guest: ready\n"));
        // Rebooted: the old ready line does not count.
        assert!(!guest_ready(
            b"corral-guest: boot\ncorral-guest: ready\n[0.0] Linux version 6.1\n"
        ));
        assert!(guest_ready(b"Linux version 6.1\n\ndebian login: "));
    }

    #[test]
    fn a_ready_line_split_across_reads_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, b"booting\ncorral-guest: re").unwrap();
        let (ready, upto) = read_for_ready(&log, 0);
        assert!(!ready);
        assert_eq!(upto, console_len(&log));
        let mut all = std::fs::read(&log).unwrap();
        all.extend_from_slice(b"ady\n");
        std::fs::write(&log, all).unwrap();
        assert!(read_for_ready(&log, upto).0);
    }
}
