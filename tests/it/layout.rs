//! The shape of this test binary. A file under `tests/it/` that no `mod` declares is never
//! compiled, so its tests would never run and never fail; a file at the top of `tests/` is a
//! test binary of its own, which links the whole library again.

use std::path::Path;

/// Whether `module` (a `main.rs` or `mod.rs`) declares `mod name;`.
fn declares(module: &Path, name: &str) -> bool {
    let text = std::fs::read_to_string(module).unwrap();
    let want = format!("mod {name};");
    text.lines()
        .map(str::trim)
        .any(|l| l == want || l == format!("pub {want}"))
}

/// Every `.rs` file and folder in `dir`, except `root`, as module names missing from `root`.
fn undeclared(dir: &Path, root: &str) -> Vec<String> {
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !declares(&dir.join(root), &name) {
                missing.push(path.display().to_string());
            }
            missing.extend(undeclared(&path, "mod.rs"));
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if name != root && !declares(&dir.join(root), stem) {
                missing.push(path.display().to_string());
            }
        }
    }
    missing
}

/// The test targets cargo finds in `tests/`: its `.rs` files and its folders with a `main.rs`
/// (other folders, such as proptest's regression files, are no targets).
fn test_targets(tests: &Path) -> Vec<String> {
    let mut targets: Vec<String> = std::fs::read_dir(tests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs") || p.join("main.rs").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    targets.sort();
    targets
}

#[test]
fn every_file_under_tests_is_a_module_of_the_one_test_binary() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    assert_eq!(
        test_targets(&tests),
        ["it"],
        "tests/ holds one test binary, `it`: add a module under tests/it/ instead"
    );
    let missing = undeclared(&tests.join("it"), "main.rs");
    assert!(
        missing.is_empty(),
        "files no `mod` declares, whose tests never run: {missing:?}"
    );
}
