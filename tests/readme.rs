//! The README's first steps work as written: the files it names exist, the
//! folders it writes into are made first, and serving from the clone leaves
//! nothing to commit.

use std::path::Path;
use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

#[test]
fn every_script_the_readme_runs_is_in_the_clone() {
    let readme = readme();
    let scripts: Vec<&str> = readme
        .split_whitespace()
        .filter(|word| word.ends_with(".py"))
        .collect();
    assert!(
        scripts.contains(&"tests/peers/seed_server.py")
            && scripts.contains(&"tests/peers/seed_client.py"),
        "the README shows the classroom peers by their paths: {scripts:?}"
    );
    for script in scripts {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
        assert!(
            path.is_file(),
            "the README runs {script}, which is not there"
        );
    }
}

#[test]
fn every_folder_the_readme_writes_completions_into_is_made_first() {
    let readme = readme();
    for line in readme
        .lines()
        .filter(|line| line.contains("haul completions"))
    {
        let Some((_, target)) = line.split_once('>') else {
            continue;
        };
        let target = target.split_whitespace().next().unwrap();
        let folder = target.rsplit_once('/').unwrap().0;
        assert!(
            readme.contains(&format!("mkdir -p {folder}")),
            "`{line}` writes into {folder}, which the README does not make"
        );
    }
}

#[test]
fn a_server_started_from_the_clone_leaves_nothing_to_commit() {
    let root = env!("CARGO_MANIFEST_DIR");
    let ignored = Command::new("git")
        .args(["check-ignore", "--no-index", "-q", "received/report.pdf"])
        .current_dir(root)
        .status();
    match ignored {
        Ok(status) => assert!(
            status.success(),
            "received/ (the default --dir) is not ignored by git"
        ),
        // No git to ask: read the rule itself.
        Err(_) => {
            let gitignore = std::fs::read_to_string(Path::new(root).join(".gitignore")).unwrap();
            assert!(gitignore.lines().any(|line| line.trim() == "/received/"));
        }
    }
    assert_eq!(haul::config::DIR, "received");
}
