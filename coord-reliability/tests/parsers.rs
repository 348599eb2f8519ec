//! Property tests of the path and URL parsers (issue 9): no input panics; what is accepted
//! obeys the documented rules and round-trips; what breaks a rule is a typed error; passwords
//! and tokens never show in Debug/Display.

use coord::{ConnectUrl, Error, Path};
use proptest::prelude::*;

/// The documented character rule of `Path`, written out independently of its code.
fn forbidden(c: char) -> bool {
    matches!(
        c as u32,
        0x00..=0x1F | 0x7F..=0x9F
            | 0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x180E
            | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF
            | 0xE000..=0xF8FF | 0xFFF0..=0xFFFF | 0x10000..
    )
}

/// A valid segment: 1..=40 characters from a mix of ASCII, Latin, Greek, CJK and Hangul.
fn segment() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            proptest::char::range('a', 'z'),
            proptest::char::range('0', '9'),
            Just('-'),
            Just('_'),
            Just('.'),
            Just(' '),
            proptest::char::range('\u{C0}', '\u{17F}'),
            proptest::char::range('\u{4E00}', '\u{4E80}'),
            proptest::char::range('\u{391}', '\u{3C9}'),
            proptest::char::range('\u{AC00}', '\u{AC80}'),
        ],
        1..40,
    )
    .prop_map(|v| v.into_iter().collect::<String>())
    .prop_filter("not . or .. or reserved", |s| {
        s != "." && s != ".." && !s.starts_with("__coord")
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_string_is_a_valid_path_or_an_invalid_path_error(s in ".{0,80}") {
        match Path::new(&s) {
            Ok(p) => {
                let t = p.as_str();
                prop_assert!(t.starts_with('/'));
                prop_assert!(t.len() <= coord::path::MAX_PATH_LEN);
                if t != "/" {
                    for seg in t[1..].split('/') {
                        prop_assert!(!seg.is_empty() && seg != "." && seg != "..");
                        prop_assert!(!seg.chars().any(forbidden));
                    }
                }
                prop_assert_eq!(Path::new(t).ok(), Some(p.clone()));
            }
            Err(Error::InvalidPath { path, .. }) => {
                prop_assert!(path.chars().count() <= 64, "the error echoes at most 64 chars");
            }
            Err(e) => prop_assert!(false, "untyped error {e:?}"),
        }
    }

    #[test]
    fn valid_paths_round_trip(segs in proptest::collection::vec(segment(), 1..6)) {
        let s = format!("/{}", segs.join("/"));
        prop_assume!(s.len() <= coord::path::MAX_PATH_LEN);
        let p = Path::new(&s).expect("valid");
        prop_assert_eq!(p.as_str(), s.as_str());
        prop_assert_eq!(p.name(), segs.last().expect("one").as_str());
        let parent = p.parent().expect("has parent");
        prop_assert_eq!(parent.join(p.name()).ok(), Some(p.clone()));
        prop_assert!(p.starts_with(&parent));
    }

    #[test]
    fn one_bad_segment_spoils_a_path(
        segs in proptest::collection::vec(segment(), 1..4),
        bad in prop_oneof![
            Just(String::new()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("__coord".to_owned()),
            "a[\u{0}-\u{1F}]b",
            "[\u{7F}-\u{9F}]",
            "x[\u{E000}-\u{F8FF}]",
            "[\u{FFF0}-\u{FFFF}]",
            "y{256}",
        ],
        at in 0usize..4,
    ) {
        let mut segs = segs;
        let at = at.min(segs.len());
        segs.insert(at, bad.clone());
        let s = format!("/{}", segs.join("/"));
        prop_assert!(
            matches!(Path::new(&s), Err(Error::InvalidPath { .. })),
            "{:?} accepted", s
        );
        let base = Path::new("/base").expect("valid");
        prop_assert!(base.join(&bad).is_err(), "join({:?}) accepted", bad);
    }

    #[test]
    fn any_string_is_a_url_or_an_invalid_url_error(s in ".{0,120}") {
        match ConnectUrl::parse(&s) {
            Ok(u) => {
                let shown = format!("{u:?} {u}");
                if let Some(pw) = u.password.as_deref().filter(|p| p.len() >= 4) {
                    let rest = format!("{}{}{}", u.hosts.join(","), u.namespace, u.scheme);
                    prop_assume!(!rest.contains(pw));
                    prop_assert!(!shown.contains(pw), "password shown: {}", shown);
                }
                let _ = u.host_ports(1);
                let _ = u.finish();
            }
            Err(Error::InvalidUrl { .. }) => {}
            Err(e) => prop_assert!(false, "untyped error {e:?}"),
        }
    }

    #[test]
    fn generated_urls_parse_back(
        scheme in prop_oneof![Just("zk"), Just("etcd"), Just("consul"), Just("mem")],
        user in "[a-z][a-z0-9]{0,8}",
        password in "PW[A-Za-z0-9@:/?#%&=]{4,16}",
        hosts in proptest::collection::vec(("[a-z][a-z0-9.-]{0,12}", 1u16..), 1..4),
        ns in proptest::collection::vec("[a-z0-9_-]{1,10}", 0..3),
        ttl_ms in 1u64..100_000,
    ) {
        let enc: String = password
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let host_list: Vec<String> = hosts.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        let namespace = if ns.is_empty() { String::new() } else { format!("/{}", ns.join("/")) };
        let url = format!(
            "{scheme}://{user}:{enc}@{}{namespace}?session_ttl={ttl_ms}ms",
            host_list.join(",")
        );
        let mut u = ConnectUrl::parse(&url).expect("valid url");
        prop_assert_eq!(u.scheme.as_str(), scheme);
        prop_assert_eq!(u.username.as_deref(), Some(user.as_str()));
        prop_assert_eq!(u.password.as_deref(), Some(password.as_str()));
        prop_assert_eq!(&u.hosts, &host_list);
        prop_assert_eq!(&u.namespace, &namespace);
        let hp = u.host_ports(9).expect("host:port");
        prop_assert_eq!(hp.len(), hosts.len());
        for ((h, p), (h2, p2)) in hosts.iter().zip(hp) {
            prop_assert_eq!(h, &h2);
            prop_assert_eq!(*p, p2);
        }
        let shown = format!("{u:?} {u}");
        prop_assert!(!shown.contains(&password) && !shown.contains(&enc), "{}", shown);
        prop_assert_eq!(
            u.take_duration("session_ttl").expect("duration"),
            Some(std::time::Duration::from_millis(ttl_ms))
        );
        prop_assert!(u.finish().is_ok());
    }

    #[test]
    fn unknown_options_are_rejected(opt in "[a-z_]{1,12}") {
        prop_assume!(!["session_ttl", "session_timeout", "timeout", "max_value_size"].contains(&opt.as_str()));
        let mut u = ConnectUrl::parse(&format!("zk://h:1/ns?{opt}=1")).expect("parses");
        let _ = u.take_duration("timeout");
        let rejected = matches!(u.finish(), Err(Error::InvalidUrl { .. }));
        prop_assert!(rejected, "unknown option {} accepted", opt);
    }
}
