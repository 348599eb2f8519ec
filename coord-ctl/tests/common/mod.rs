//! Shared by the integration tests.

use std::process::Command;
use std::sync::OnceLock;

/// Whether the coordctl binary under test was built with `scheme`'s backend, as the binary
/// itself says (`coordctl backends`). Not this crate's `cfg!(feature = …)`: a workspace build
/// unifies coord's features, so the binary can have backends coord-ctl did not ask for.
pub fn built_with(scheme: &str) -> bool {
    static LIST: OnceLock<Vec<String>> = OnceLock::new();
    LIST.get_or_init(|| {
        let out = Command::new(env!("CARGO_BIN_EXE_coordctl"))
            .env_remove("COORD_URL")
            .arg("backends")
            .output()
            .expect("run coordctl backends");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "coordctl backends: {:?}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.lines().map(str::to_owned).collect()
    })
    .iter()
    .any(|s| s == scheme)
}
