//! Golden files: a test renders text, compares it whole with a checked-in file, and
//! finally checks that every file of its golden directory was rendered (a file no test
//! renders any more fails, by name). `BOOTGATE_BLESS=1` rewrites the files and deletes the
//! stale ones instead; it refuses to run under CI, where a golden file must never change.
//! (src/boot/mod.rs's unit tests keep a copy of these rules for `tests/golden/ipxe/`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Whether this run rewrites golden files (`BOOTGATE_BLESS` set) instead of comparing
/// them; panics under CI, where a golden file must never change.
pub fn blessing() -> bool {
    let bless = std::env::var_os("BOOTGATE_BLESS").is_some();
    assert!(
        !(bless && super::in_ci()),
        "BOOTGATE_BLESS rewrites golden files: refused under CI (bless locally, review the \
         diff, commit it)"
    );
    bless
}

/// One golden directory, checked file by file, then as a whole by [`GoldenDir::finish`].
pub struct GoldenDir {
    dir: PathBuf,
    bless: bool,
    /// The files rendered so far, relative to `dir`.
    rendered: BTreeSet<PathBuf>,
}

impl GoldenDir {
    /// `dir` (absolute); panics when bless mode is asked for under CI.
    pub fn new(dir: PathBuf) -> GoldenDir {
        GoldenDir {
            dir,
            bless: blessing(),
            rendered: BTreeSet::new(),
        }
    }

    /// Compares `text` with the golden file `rel` (or, blessing, writes it).
    pub fn check(&mut self, rel: impl AsRef<Path>, text: &str) {
        let rel = rel.as_ref();
        self.rendered.insert(rel.to_path_buf());
        let path = self.dir.join(rel);
        if self.bless {
            std::fs::create_dir_all(path.parent().expect("a golden file has a parent")).unwrap();
            std::fs::write(&path, text).unwrap();
            return;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with BOOTGATE_BLESS=1)", path.display()));
        assert!(
            want == text,
            "{} differs from the rendering (BOOTGATE_BLESS=1 rewrites it):\n{text}",
            path.display()
        );
    }

    /// Fails on every file of the directory that was not rendered (blessing: deletes it).
    pub fn finish(self) {
        let stale: Vec<PathBuf> = files_under(&self.dir)
            .into_iter()
            .filter(|rel| !self.rendered.contains(rel))
            .collect();
        if self.bless {
            for rel in &stale {
                std::fs::remove_file(self.dir.join(rel)).unwrap();
            }
            remove_empty_dirs(&self.dir);
            return;
        }
        assert!(
            stale.is_empty(),
            "golden files no test renders any more (delete them, or BOOTGATE_BLESS=1 does): {}",
            stale
                .iter()
                .map(|rel| self.dir.join(rel).display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// The regular files under `dir`, relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                todo.push(rel);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// Removes the directories under `dir` left empty (bottom up); keeps `dir` itself.
fn remove_empty_dirs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_dirs(&path);
            // Fails (and is meant to) while something is left inside.
            let _ = std::fs::remove_dir(&path);
        }
    }
}
