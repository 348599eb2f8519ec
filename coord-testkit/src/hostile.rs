//! The hostile-input table, shared by the API tests (coord-reliability) and the coordctl tests
//! (coord-ctl), so that both are driven by the same inputs.

/// Paths that every backend must refuse with `InvalidPath` before any I/O.
pub fn bad_paths() -> Vec<String> {
    vec![
        "".into(),
        "relative".into(),
        "/a/../b".into(),
        "/..".into(),
        "/.".into(),
        "/a/./b".into(),
        "//".into(),
        "/a/".into(),
        "/a\0b".into(),
        "/a\x01b".into(),
        "/a\nb".into(),
        "/a\x1bb".into(),
        "/a\x7fb".into(),
        "/a\u{85}b".into(),
        // Format characters (Consul cannot read them back) and non-BMP code points (ZooKeeper
        // refuses them): rejected by `Path` so that a valid path is valid on every backend.
        "/a\u{200D}b".into(),
        "/\u{202E}rtl".into(),
        "/\u{FEFF}bom".into(),
        "/😀".into(),
        "/\u{E000}".into(),
        "/\u{FFFF}".into(),
        "/\u{FFF0}".into(),
        "/__coord".into(),
        format!("/{}", "x".repeat(256)),
        format!("/{}", "x".repeat(300)),
        format!("/{}", "é".repeat(128)),
        "/a".repeat(513),
    ]
}

/// Election, lock, group and service names that must be refused with `InvalidPath`.
pub fn bad_names() -> Vec<String> {
    vec![
        "".into(),
        ".".into(),
        "..".into(),
        "a/b".into(),
        "../escape".into(),
        "a\0b".into(),
        "\x07".into(),
        "x".repeat(300),
        "__coord_x".into(),
        "\u{F8FF}".into(),
        "\u{202E}rtl".into(),
        "😀".into(),
    ]
}

/// The entries a command line can carry (an argument cannot hold a NUL byte).
pub fn argv_safe(inputs: Vec<String>) -> Vec<String> {
    inputs.into_iter().filter(|s| !s.contains('\0')).collect()
}
