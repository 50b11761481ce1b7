//! The library reports through the `log` facade and never writes to stderr
//! itself: the application that embeds it decides where messages go.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_library_never_writes_to_stderr_itself() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    assert!(!files.is_empty());
    let mut places = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests (a `#[cfg(test)]` module, last in its file) may say
        // why they skip.
        let lines = text.lines().take_while(|l| l.trim() != "#[cfg(test)]");
        for (i, line) in lines.enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if ["eprintln!", "eprint!", "std::io::stderr", "io::stderr()"]
                .iter()
                .any(|w| code.contains(w))
            {
                let rel = file.strip_prefix(root).unwrap_or(&file);
                places.push(format!("{}:{}: {}", rel.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        places.is_empty(),
        "the library writes to stderr (use log::warn!/error! instead) at:\n{}",
        places.join("\n")
    );
}
