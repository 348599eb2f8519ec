//! The hostile-input table of coord-reliability/tests/hostile.rs, driven through the real
//! `coordctl` binary (issue 9): paths with `..` and `.`, control characters, format and
//! private-use characters, non-BMP code points, over-long names and paths, names that are
//! not one segment, values over the backend's limit (through `coordctl shell`, since one argv
//! string is capped at 128 KiB), malformed URLs, unknown options, bad numbers, non-UTF-8
//! arguments and wrong credentials. Each must end with its documented exit code (2 for a usage
//! error, 1 for a refusal by the server, 5 for an unreachable server), one `error:` line on
//! stderr, no panic, no secret, and nothing written: the namespace's `tree` is the same before
//! and after. Run on mem:// (where "nothing written" is vacuous: a store per process) and on
//! every real backend compiled into the binary (as `coordctl backends` lists them; servers from
//! the test kit).

mod common;

use common::built_with;
use coord_testkit::hostile;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_coordctl");
const LIMIT: Duration = Duration::from_secs(30);

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cmd(url: Option<&str>, args: &[OsString]) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("COORD_URL").env_remove("RUST_BACKTRACE");
    if let Some(u) = url {
        c.args(["--url", u]);
    }
    c.args(args);
    c
}

fn wait_limited(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs to completion (killed after LIMIT: a hang fails the test), feeding `stdin`.
fn run_with(mut c: Command, stdin: Vec<u8>) -> Out {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn coordctl");
    let mut input = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let ro = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let re = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let status = wait_limited(&mut child, LIMIT);
    let _ = writer.join();
    let stdout = ro.join().expect("stdout reader");
    let stderr = re.join().expect("stderr reader");
    let code = status.and_then(|s| s.code()).unwrap_or_else(|| {
        panic!("coordctl did not finish within {LIMIT:?}\nstdout: {stdout}\nstderr: {stderr}")
    });
    Out {
        code,
        stdout,
        stderr,
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn run(url: Option<&str>, args: &[OsString]) -> Out {
    run_with(cmd(url, args), Vec::new())
}

/// A printable form of an argument list (control characters escaped, long ones cut).
fn shown(args: &[OsString]) -> String {
    args.iter()
        .map(|a| {
            let s = format!("{a:?}");
            if s.chars().count() > 60 {
                let head: String = s.chars().take(40).collect();
                format!("{head}…({} bytes)", a.len())
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The documented failure shape: exit `want`, exactly one `error:` line on stderr, no panic
/// or backtrace, none of `secrets` anywhere, nothing on stdout.
fn assert_failure(o: &Out, want: i32, what: &str, secrets: &[&str]) {
    assert_eq!(
        o.code, want,
        "{what}: exit {} (want {want})\nstderr: {}",
        o.code, o.stderr
    );
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(
            !o.stderr.contains(bad),
            "{what}: {bad} in stderr: {}",
            o.stderr
        );
    }
    let errors: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{what}: one error line expected: {:?}",
        o.stderr
    );
    for s in secrets {
        assert!(
            !o.stderr.contains(s) && !o.stdout.contains(s),
            "{what}: secret shown: {}",
            o.stderr
        );
    }
    assert!(o.stdout.trim().is_empty(), "{what}: stdout: {}", o.stdout);
}

/// Every command with a hostile path or name: exit 2 (usage) with one error line.
fn path_and_name_cases() -> Vec<Vec<OsString>> {
    let mut cases = Vec::new();
    for bad in hostile::argv_safe(hostile::bad_paths()) {
        let b = bad.as_str();
        for args in [
            &["create", b, "v", "--parents"][..],
            &["create", b, "v", "--ephemeral"],
            &["create", b, "v", "--sequential", "--parents"],
            &["set", b, "v"],
            &["get", b],
            &["stat", b],
            &["ls", b],
            &["tree", b],
            &["rm", b, "--recursive"],
            &["watch", b, "--count", "1"],
        ] {
            cases.push(os(args));
        }
    }
    for bad in hostile::argv_safe(hostile::bad_names()) {
        let b = bad.as_str();
        for args in [
            &["elect", b, "v"][..],
            &["leader", b],
            &["lock", b, "--", "true"],
            &["services", b],
        ] {
            cases.push(os(args));
        }
    }
    cases
}

/// Bad options and numbers: exit 2.
fn option_cases() -> Vec<Vec<OsString>> {
    use std::os::unix::ffi::OsStringExt;
    let mut cases: Vec<Vec<OsString>> = [
        &["--frobnicate", "ls", "/"][..],
        &["ls", "/", "--bogus"],
        &["ls"],
        &["--timeout", "-1", "ls", "/"],
        &["--timeout", "abc", "ls", "/"],
        &["--timeout", "nan", "ls", "/"],
        &["--timeout", "inf", "ls", "/"],
        &["--timeout", "1e300", "ls", "/"],
        &["--timeout", "1e-12", "ls", "/"],
        &["set", "/a", "v", "--version", "-1"],
        &["set", "/a", "v", "--version", "99999999999999999999999"],
        &["rm", "/a", "--version", "v"],
        &["watch", "/a", "--count", "-3"],
        &["lock", "l"],
        &["frobnicate"],
    ]
    .iter()
    .map(|a| os(a))
    .collect();
    // Arguments that are not UTF-8 at all.
    cases.push(vec![
        OsString::from("get"),
        OsString::from_vec(b"/a\xffb".to_vec()),
    ]);
    cases.push(vec![
        OsString::from("elect"),
        OsString::from_vec(b"\xc3\x28".to_vec()),
        OsString::from("v"),
    ]);
    cases
}

/// Malformed URLs and unknown URL options: exit 2 (with `secret` in some, never shown).
fn bad_urls(secret: &str) -> Vec<String> {
    vec![
        "nothing".into(),
        "://x".into(),
        "ftp://h:1".into(),
        "zk://".into(),
        "zk://h:99999".into(),
        "zk://h:0".into(),
        "zk://h:1,,h:2".into(),
        "zk://h:1/a/../b".into(),
        "zk://h:1/a%00b".into(),
        "zk://h:1/%zz".into(),
        "zk://h:1/ns#frag".into(),
        "zk://h:1?bogus=1".into(),
        "zk://h:1?timeout=0s".into(),
        "zk://h:1?session_timeout=soon".into(),
        "zk://bob@h:1".into(),
        "zk://h:1?a=1&a=2".into(),
        format!("zk://alice:{secret}@h:1?bogus=1"),
        "etcd://h:1?bogus=1".into(),
        "etcd://h:1?session_ttl=abc".into(),
        "etcd://h:1?tls=maybe".into(),
        "etcd://[::1:2379".into(),
        format!("etcd://root:{secret}@h:1?bogus=1"),
        "consul://a:1,b:2".into(),
        "consul://tok@h:1?token=x".into(),
        "consul://u:p@h:1".into(),
        "consul://h:1?session_ttl=1ms".into(),
        "consul://h:1?ca=/x".into(),
        "consul://tok%0A@h:1".into(),
        format!("consul://{secret}@h:1?bogus=1"),
        format!("consul://h:1?token={secret}&bogus=1"),
        "mem://x?nope=1".into(),
        "mem://x?session_ttl=-1s".into(),
    ]
}

/// `coordctl shell` lines writing values one byte over `max`: each is a usage error (exit 2
/// for the shell: the code of the last failure) with one error line each.
fn oversized_script(max: usize) -> (Vec<u8>, usize) {
    let big = "x".repeat(max + 1);
    let lines = [
        format!("create /big {big}"),
        format!("create /big {big} --parents"),
        format!("create /dir/big {big} --parents"),
        format!("create /big {big} --ephemeral"),
        format!("create /seq- {big} --sequential"),
        format!("elect e {big}"),
    ];
    let n = lines.len();
    (lines.join("\n").into_bytes(), n)
}

/// The whole table against `url` (a fresh namespace); `tree /` is compared before and after.
fn hostile_table(url: &str, label: &str, max_value: usize) {
    let t0 = Instant::now();
    let before = run(Some(url), &os(&["--json", "tree", "/"]));
    assert_eq!(before.code, 0, "{label}: tree: {}", before.stderr);
    let mut count = 0;
    for args in path_and_name_cases() {
        let o = run(Some(url), &args);
        assert_failure(&o, 2, &format!("{label}: {}", shown(&args)), &[]);
        count += 1;
    }
    for args in option_cases() {
        let o = run(Some(url), &args);
        assert_failure(&o, 2, &format!("{label}: {}", shown(&args)), &[]);
        count += 1;
    }
    let (script, n) = oversized_script(max_value);
    let o = run_with(cmd(Some(url), &os(&["shell"])), script);
    assert_eq!(o.code, 2, "{label}: oversized values: {}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "{label}: {}", o.stderr);
    let errors: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), n, "{label}: one error per line: {errors:?}");
    for e in &errors {
        assert!(e.contains("too large"), "{label}: {e}");
    }
    count += n;
    let after = run(Some(url), &os(&["--json", "tree", "/"]));
    assert_eq!(after.code, 0, "{label}: tree: {}", after.stderr);
    assert_eq!(
        before.stdout, after.stdout,
        "{label}: the hostile commands wrote something"
    );
    println!(
        "{label}: {count} hostile commands: each exit 2 with one error line, nothing written \
         ({:?}; value limit {max_value} bytes)",
        t0.elapsed()
    );
}

/// The backend's value limit, as the library reports it.
fn max_value(url: &str) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let c = tokio::time::timeout(LIMIT, coord::connect(url))
            .await
            .expect("connect in time")
            .expect("connect");
        let max = c.capabilities().max_value_size;
        let _ = c.close().await;
        max
    })
}

fn fresh(base: &str, test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{base}/coordctl-hostile-{test}-{nanos}")
}

/// Whether the binary has `scheme`'s backend; if not, says the test has nothing to run.
fn testable(scheme: &str, test: &str) -> bool {
    if built_with(scheme) {
        return true;
    }
    eprintln!("{test}: coordctl was built without {scheme}:// (see `coordctl backends`): skipped");
    false
}

#[test]
fn hostile_input_mem() {
    // One store per process: "nothing written" is vacuous here, the codes and messages are not.
    hostile_table("mem://hostile", "mem", max_value("mem://hostile"));
}

#[test]
fn hostile_input_zookeeper() {
    if !testable("zk", "hostile_input_zookeeper") {
        return;
    }
    let Some(ep) = coord_testkit::shared_endpoints(coord_testkit::Kind::ZooKeeper) else {
        return;
    };
    let url = fresh(&format!("zk://{ep}"), "zk");
    hostile_table(&url, "zk", max_value(&url));
}

#[test]
fn hostile_input_etcd() {
    if !testable("etcd", "hostile_input_etcd") {
        return;
    }
    let Some(ep) = coord_testkit::shared_endpoints(coord_testkit::Kind::Etcd) else {
        return;
    };
    let url = fresh(&format!("etcd://{ep}"), "etcd");
    hostile_table(&url, "etcd", max_value(&url));
}

#[test]
fn hostile_input_consul() {
    if !testable("consul", "hostile_input_consul") {
        return;
    }
    let Some(ep) = coord_testkit::shared_endpoints(coord_testkit::Kind::Consul) else {
        return;
    };
    let url = fresh(&format!("consul://{ep}"), "consul");
    hostile_table(&url, "consul", max_value(&url));
}

#[test]
fn malformed_urls_are_usage_errors_without_secrets() {
    let secret = "S3cr3t-url-pw-61";
    let urls = bad_urls(secret);
    for url in &urls {
        let o = run(Some(url), &os(&["--timeout", "5", "ls", "/"]));
        let what = format!("{:?}", url.replace(secret, "***"));
        // A backend that is not compiled in is a usage error too (exit 2), naming the feature.
        assert_failure(&o, 2, &what, &[secret]);
    }
    println!(
        "{} malformed URLs: each exit 2 with one error line",
        urls.len()
    );
}

/// Wrong credentials: an unreachable server with a password in the URL (exit 5; 2 for a
/// backend the binary was built without), and on ZooKeeper another identity writing under
/// coord's nodes (refused: exit 1, nothing changed).
#[test]
fn wrong_credentials() {
    let secret = "S3cr3t-cli-pw-62";
    let mut n = 0;
    for (url, scheme) in [
        (format!("zk://alice:{secret}@127.0.0.1:1/ns"), "zk"),
        (format!("etcd://root:{secret}@127.0.0.1:1/ns"), "etcd"),
        (format!("consul://{secret}@127.0.0.1:1/ns"), "consul"),
        (format!("consul://127.0.0.1:1/ns?token={secret}"), "consul"),
    ] {
        let o = run(Some(&url), &os(&["--timeout", "3", "create", "/x", "v"]));
        let want = if built_with(scheme) { 5 } else { 2 };
        assert_failure(&o, want, &url.replace(secret, "***"), &[secret]);
        n += 1;
    }
    println!("{n} unreachable servers with credentials: exit 5 (2 if not compiled in), no secret");
    if testable("zk", "wrong_credentials (zk identities)") {
        zk_other_identities_are_refused(secret);
    }
}

/// On ZooKeeper, nodes created with credentials cannot be changed by another identity (or by
/// none): exit 1 with a hint about the credentials, and the tree is unchanged.
fn zk_other_identities_are_refused(secret: &str) {
    let Some(ep) = coord_testkit::shared_endpoints(coord_testkit::Kind::ZooKeeper) else {
        return;
    };
    let base = fresh("", "auth");
    let owner = format!("zk://alice:{secret}@{ep}{base}");
    let o = run(Some(&owner), &os(&["create", "/cfg", "v1"]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let before = run(Some(&owner), &os(&["--json", "tree", "/"]));
    let wrong = "Wr0ng-cli-pw-63";
    for url in [
        format!("zk://alice:{wrong}@{ep}{base}"),
        format!("zk://bob:{wrong}@{ep}{base}"),
        format!("zk://{ep}{base}"),
    ] {
        for args in [
            &["set", "/cfg", "evil"][..],
            &["create", "/cfg/child", "x"],
            &["rm", "/cfg"],
        ] {
            let o = run(Some(&url), &os(args));
            let what = format!("{} {args:?}", url.replace(wrong, "***"));
            assert_failure(&o, 1, &what, &[secret, wrong]);
            assert!(o.stderr.contains("credentials"), "{what}: {}", o.stderr);
        }
    }
    let after = run(Some(&owner), &os(&["--json", "tree", "/"]));
    assert_eq!(
        before.stdout, after.stdout,
        "another identity changed something"
    );
    assert!(after.stdout.contains("v1"), "{}", after.stdout);
    let o = run(Some(&owner), &os(&["rm", "/cfg"]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    println!(
        "zk: 3 wrong identities x 3 writes: exit 1 (\"check the credentials\"), nothing changed"
    );
}
