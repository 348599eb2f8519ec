//! Runs the real `coordctl` binary.
//!
//! On `mem://` every process has its own empty store, so each test either checks one command
//! on its own or runs several commands in one process through `coordctl shell`. The tests at
//! the end need a shared backend (one process campaigns, another reads the leader, …): they
//! run against every real backend compiled into the binary (as `coordctl backends` lists them),
//! on servers the test kit starts, and against `COORDCTL_TEST_URL` when it is set.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::built_with;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_coordctl");
const LIMIT: Duration = Duration::from_secs(20);

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cmd(url: Option<&str>, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("COORD_URL");
    if let Some(u) = url {
        c.args(["--url", u]);
    }
    c.args(args);
    c
}

/// Runs to completion (killed after LIMIT), feeding `stdin`.
fn run_with(mut c: Command, stdin: &str) -> Out {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn coordctl");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(data.as_bytes());
    });
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let ro = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let re = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
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

fn run(url: Option<&str>, args: &[&str]) -> Out {
    run_with(cmd(url, args), "")
}

fn mem(args: &[&str]) -> Out {
    run(Some("mem://"), args)
}

/// Runs `coordctl shell` on mem with `script` as its input.
fn shell(extra: &[&str], script: &str) -> Out {
    let mut args = extra.to_vec();
    args.push("shell");
    run_with(cmd(Some("mem://"), &args), script)
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

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn one_line_error(o: &Out) -> String {
    let lines: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected: {:?}", o.stderr);
    lines[0].to_owned()
}

/// A long-running coordctl whose stdout lines arrive on a channel.
struct Live {
    child: Child,
    lines: mpsc::Receiver<String>,
    errs: mpsc::Receiver<String>,
}

fn forward(r: impl Read + Send + 'static, echo: bool) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if echo {
                eprintln!("{l}");
            }
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

fn expect_on(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => {}
            Err(_) => panic!("no line containing {needle:?} within {LIMIT:?}"),
        }
    }
}

impl Live {
    fn start(url: &str, args: &[&str]) -> Live {
        let mut c = cmd(Some(url), args);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn coordctl");
        let lines = forward(child.stdout.take().expect("stdout"), false);
        let errs = forward(child.stderr.take().expect("stderr"), true);
        Live { child, lines, errs }
    }

    /// The first stdout line containing `needle` (panics after LIMIT).
    fn expect_line(&self, needle: &str) -> String {
        expect_on(&self.lines, needle)
    }

    /// The first stderr line containing `needle` (panics after LIMIT).
    fn expect_err_line(&self, needle: &str) -> String {
        expect_on(&self.errs, needle)
    }

    fn interrupt(&self) {
        let st = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(st.success());
    }

    fn wait(mut self) -> i32 {
        let st = wait_limited(&mut self.child, LIMIT).expect("coordctl ends after Ctrl-C");
        st.code().expect("exit code, not a signal")
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- usage, URLs and exit codes -------------------------------------------------------------

#[test]
fn missing_url_is_a_usage_error_that_says_what_to_do() {
    let o = run(None, &["ls", "/"]);
    assert_eq!(o.code, 2);
    let e = one_line_error(&o);
    assert!(e.contains("--url") && e.contains("COORD_URL"), "{e}");
}

#[test]
fn url_from_the_environment() {
    let mut c = cmd(None, &["ls", "/"]);
    c.env("COORD_URL", "mem://");
    let o = run_with(c, "");
    assert_eq!(o.code, 0, "{}", o.stderr);
}

#[test]
fn bad_urls_and_missing_backends_are_usage_errors() {
    let o = run(Some("redis://x"), &["ls", "/"]);
    assert_eq!(o.code, 2);
    assert!(one_line_error(&o).contains("unknown URL scheme"));
    let o = run(Some("mem://x?bogus=1"), &["ls", "/"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    // A backend left out of the binary is a usage error naming the feature; one built in
    // finds nothing listening on port 1 (exit 5).
    for scheme in ["zk", "etcd", "consul"] {
        let url = format!("{scheme}://127.0.0.1:1/x");
        let o = run(Some(&url), &["--timeout", "2", "ls", "/"]);
        let e = one_line_error(&o);
        if built_with(scheme) {
            assert_eq!(o.code, 5, "{url}: {e}");
        } else {
            assert_eq!(o.code, 2, "{url}: {e}");
            assert!(
                e.contains(&format!("built without the {scheme}:// backend")),
                "{e}"
            );
        }
    }
}

#[test]
fn backends_lists_the_compiled_in_schemes_without_a_url() {
    let o = run(None, &["backends"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let text: Vec<&str> = o.stdout.lines().collect();
    assert!(text.contains(&"mem"), "{}", o.stdout);
    for s in &text {
        assert!(["mem", "zk", "etcd", "consul"].contains(s), "{s}");
    }
    let o = run(None, &["--json", "backends"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v = &json_lines(&o.stdout)[0];
    assert_eq!(v["backends"], serde_json::json!(text), "{}", o.stdout);
    let o = shell(&[], "backends\n");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.lines().collect::<Vec<_>>(), text);
    let o = run(None, &["--help"]);
    assert!(o.stdout.contains("coordctl backends"), "{}", o.stdout);
}

#[test]
fn bad_arguments_are_usage_errors_on_one_line() {
    for args in [
        &["ls", "relative/path"][..],
        &["ls", "/a//b"],
        &["set", "/a"],
        &["set", "/a", "x", "--version", "abc"],
        &["lock", "l"],
        &["frobnicate"],
    ] {
        let o = mem(args);
        assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
        one_line_error(&o);
    }
    let o = mem(&["--timeout", "0", "ls", "/"]);
    assert_eq!(o.code, 2);
}

#[test]
fn help_documents_the_exit_codes() {
    let o = run(None, &["--help"]);
    assert_eq!(o.code, 0);
    for needle in [
        "Exit codes",
        "3    not found",
        "4    conflict",
        "5    connection",
    ] {
        assert!(o.stdout.contains(needle), "{needle}: {}", o.stdout);
    }
    let o = run(None, &["lock", "--help"]);
    assert!(o.stdout.contains("COORD_FENCING_TOKEN"));
}

#[test]
fn mem_says_it_lives_in_one_process() {
    let o = mem(&["ls", "/"]);
    assert_eq!(o.code, 0);
    assert!(
        o.stderr.contains("coordctl --url mem:// shell"),
        "{}",
        o.stderr
    );
    assert!(o.stdout.trim().is_empty());
}

// ---- one command per process ----------------------------------------------------------------

#[test]
fn not_found_exits_3_with_a_hint() {
    for args in [
        &["ls", "/a/b"][..],
        &["get", "/a/b"],
        &["stat", "/a/b"],
        &["tree", "/a/b"],
        &["set", "/a/b", "x"],
        &["rm", "/a/b"],
        &["create", "/a/b", "x"],
        &["leader", "nobody"],
        &["services", "api"],
    ] {
        let o = mem(args);
        assert_eq!(o.code, 3, "{args:?}: {}", o.stderr);
        let e = one_line_error(&o);
        assert!(
            e.contains("(") && e.contains("coordctl") || e.contains("--parents"),
            "{e}"
        );
    }
    let e = one_line_error(&mem(&["get", "/a/b"]));
    assert!(e.contains("/a/b not found (use `coordctl ls /a`"), "{e}");
}

#[test]
fn json_errors_are_one_json_object() {
    let o = mem(&["--json", "get", "/nope"]);
    assert_eq!(o.code, 3);
    let v = json_lines(&o.stderr);
    assert_eq!(v.len(), 1, "{}", o.stderr);
    assert_eq!(v[0]["exit_code"], 3);
    assert!(v[0]["error"].as_str().unwrap_or("").contains("/nope"));
}

#[test]
fn ls_json_and_tree_on_an_empty_store() {
    let o = mem(&["--json", "ls", "/"]);
    assert_eq!(o.code, 0);
    let v = json_lines(&o.stdout);
    assert_eq!(v[0]["path"], "/");
    assert_eq!(v[0]["children"], Value::Array(vec![]));
    let o = mem(&["tree"]);
    assert_eq!((o.code, o.stdout.trim()), (0, "/"));
}

#[test]
fn create_with_parents_prints_the_created_node() {
    let o = mem(&["create", "/a/b/c", "hello", "--parents"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "created /a/b/c");
    let o = mem(&["--json", "create", "/jobs/job-", "x", "-p", "--sequential"]);
    let v = json_lines(&o.stdout);
    assert_eq!(v[0]["path"], "/jobs/job-0000000000");
    assert_eq!(v[0]["sequence"], 0);
    assert_eq!(v[0]["ephemeral"], false);
}

#[test]
fn ephemeral_create_holds_until_ctrl_c() {
    let live = Live::start("mem://", &["create", "/e", "x", "--ephemeral"]);
    live.expect_line("created /e");
    let note = live.expect_err_line("ephemeral");
    assert!(
        note.contains("lives only while this command runs"),
        "{note}"
    );
    assert!(note.contains("Ctrl-C"), "{note}");
    live.interrupt();
    assert_eq!(live.wait(), 0);
}

#[test]
fn watch_prints_the_current_state_then_stops_on_ctrl_c() {
    let live = Live::start("mem://", &["watch", "/cfg"]);
    let l = live.expect_line("current");
    assert!(l.contains("/cfg does not exist"), "{l}");
    live.interrupt();
    assert_eq!(live.wait(), 0);

    let live = Live::start("mem://", &["--json", "watch", "/", "--children"]);
    let v: Value = serde_json::from_str(&live.expect_line("current")).expect("json");
    assert_eq!(v["event"], "current");
    assert_eq!(v["children"], Value::Array(vec![]));
    live.interrupt();
    assert_eq!(live.wait(), 0);
}

#[test]
fn elect_wins_alone_prints_the_token_and_resigns_on_ctrl_c() {
    let live = Live::start("mem://", &["--json", "elect", "sched", "node-1"]);
    let v: Value = serde_json::from_str(&live.expect_line("elected")).expect("json");
    assert_eq!(v["election"], "sched");
    assert_eq!(v["value"], "node-1");
    assert!(v["token"].is_u64());
    live.interrupt();
    live.expect_line("resigned");
    assert_eq!(live.wait(), 0);

    let live = Live::start("mem://", &["elect", "sched", "node-1"]);
    let l = live.expect_line("elected");
    // The token is the store's creation stamp of the candidate node: never 0 (it was the
    // node's sequence number, 0 for the first candidate, until issue 14).
    let token: u64 = l
        .split("fencing token ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no token in {l}"));
    assert!(token > 0, "{l}");
    live.interrupt();
    assert_eq!(live.wait(), 0);
}

#[test]
fn lock_runs_the_command_and_returns_its_exit_code() {
    assert_eq!(mem(&["lock", "job", "--", "true"]).code, 0);
    assert_eq!(mem(&["lock", "job", "--", "false"]).code, 1);
    assert_eq!(mem(&["lock", "job", "--", "sh", "-c", "exit 7"]).code, 7);
    let o = mem(&[
        "lock",
        "job",
        "--",
        "sh",
        "-c",
        "echo \"$COORD_LOCK $COORD_FENCING_TOKEN\"",
    ]);
    // The fencing token is the store's creation stamp of the lock node: never 0.
    let (lock, token) = o.stdout.trim().split_once(' ').expect("lock and token");
    assert_eq!((o.code, lock), (0, "job"));
    assert!(token.parse::<u64>().is_ok_and(|t| t > 0), "{token}");
    let o = mem(&["lock", "job", "--", "/no/such/command"]);
    assert_eq!(o.code, 127);
    assert!(one_line_error(&o).contains("cannot run"));
}

#[test]
fn services_on_an_empty_store() {
    let o = mem(&["--json", "services"]);
    assert_eq!(o.code, 0);
    assert_eq!(json_lines(&o.stdout)[0]["services"], Value::Array(vec![]));
}

// ---- several commands in one process: the shell ---------------------------------------------

#[test]
fn shell_walks_the_kernel() {
    let o = shell(
        &["--json"],
        r#"
        create /app/config/db host=a --parents
        create /app/workers/w- one --ephemeral --sequential --parents
        get /app/config/db
        set /app/config/db host=b --version 0
        stat /app/config/db
        ls /app
        tree /app
        "#,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v = json_lines(&o.stdout);
    assert_eq!(v[0]["path"], "/app/config/db");
    assert_eq!(v[1]["path"], "/app/workers/w-0000000000");
    assert_eq!(v[1]["ephemeral"], true);
    assert_eq!(v[2]["value"], "host=a");
    assert_eq!(v[2]["version"], 0);
    assert_eq!(v[3]["version"], 1);
    assert_eq!(v[4]["value"], "host=b");
    assert_eq!(v[4]["children"], 0);
    assert_eq!(v[4]["ephemeral_owner"], Value::Null);
    assert_eq!(v[5]["children"], serde_json::json!(["config", "workers"]));
    let tree: Vec<(&str, u64)> = v[6..]
        .iter()
        .map(|n| {
            (
                n["path"].as_str().unwrap_or(""),
                n["depth"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    assert_eq!(
        tree,
        [
            ("/app", 0),
            ("/app/config", 1),
            ("/app/config/db", 2),
            ("/app/workers", 1),
            ("/app/workers/w-0000000000", 2)
        ]
    );
    assert!(v[10]["ephemeral_owner"].is_string());
}

#[test]
fn shell_human_tree_marks_ephemerals_and_values() {
    let o = shell(
        &[],
        "create /a/b x -p\ncreate /a/c y --ephemeral\ncreate /a/b/d\ntree /a\n",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let tree: Vec<&str> = o.stdout.lines().skip(3).collect();
    assert_eq!(
        tree,
        [
            "/a",
            "├── b = \"x\"",
            "│   └── d",
            "└── c = \"y\" (ephemeral)"
        ]
    );
    assert!(o.stderr.contains("lives until you leave this shell"));
}

#[test]
fn shell_conflicts_exit_4() {
    for (script, needle) in [
        ("create /a x\ncreate /a y\n", "already exists"),
        (
            "create /a x\nset /a y --version 5\n",
            "no longer at version 5",
        ),
        ("create /a x\nrm /a --version 3\n", "no longer at version 3"),
        ("create /a/b x -p\nrm /a\n", "rm --recursive /a"),
    ] {
        let o = shell(&[], script);
        assert_eq!(o.code, 4, "{script}: {}", o.stderr);
        assert!(one_line_error(&o).contains(needle), "{}", o.stderr);
    }
    let o = shell(&[], "create /a/b x\n");
    assert_eq!(o.code, 3);
    assert!(one_line_error(&o).contains("add --parents"));
    let o = shell(&[], "create /e x --ephemeral\ncreate /e/child y\n");
    assert_eq!(o.code, 1);
    assert!(one_line_error(&o).contains("ephemeral and cannot have children"));
}

#[test]
fn shell_rm_recursive_and_versioned() {
    let o = shell(
        &["--json"],
        "create /a/b/c x -p\ncreate /a/d y\nrm /a --recursive\nls /\ncreate /v 1\nrm /v --version 0\nls /\n",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v = json_lines(&o.stdout);
    let rm = v
        .iter()
        .find(|x| x.get("deleted_below").is_some())
        .expect("rm");
    assert_eq!(rm["deleted_below"], 3);
    let lists: Vec<&Value> = v.iter().filter(|x| x.get("children").is_some()).collect();
    assert_eq!(lists[0]["children"], Value::Array(vec![]));
    assert_eq!(lists[1]["children"], Value::Array(vec![]));
}

#[test]
fn shell_watch_sees_changes_made_after_it() {
    let o = shell(
        &["--json"],
        "watch /w --count 3 &\nwatch /w --children --count 1 &\ncreate /w a\nset /w b\ncreate /w/kid k\nrm /w/kid\nrm /w\nwait\n",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v = json_lines(&o.stdout);
    let key: Vec<(&str, &str)> = v
        .iter()
        .filter(|x| x["path"] == "/w" && x.get("exists").is_some())
        .map(|x| {
            (
                x["event"].as_str().unwrap_or(""),
                x["value"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        key,
        [
            ("current", "-"),
            ("created", "a"),
            ("changed", "b"),
            ("deleted", "-")
        ]
    );
    let kids: Vec<&Value> = v.iter().filter(|x| x.get("added").is_some()).collect();
    assert_eq!(kids[0]["event"], "current");
    assert_eq!(kids[1]["added"], serde_json::json!(["kid"]));
}

#[test]
fn shell_elect_then_leader() {
    let o = shell(&["--json"], "elect sched alice &\nleader sched\n");
    // The shell goes on once the background elect is elected, and stops it at the end.
    let v = json_lines(&o.stdout);
    let elected = v.iter().find(|x| x["event"] == "elected").expect("elected");
    let leader = v
        .iter()
        .find(|x| x.get("leader").is_some())
        .expect("leader");
    assert_eq!(leader["leader"], "alice");
    assert_eq!(leader["token"], elected["token"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

#[test]
fn shell_lock_excludes_and_leaves_nothing_behind() {
    let o = shell(
        &[],
        "lock job -- sh -c 'echo A-start; sleep 0.3; echo A-end' &\n\
         lock job -- sh -c 'echo B-start; sleep 0.3; echo B-end' &\n\
         wait\n\
         lock job -- false\n\
         ls /locks/job\n",
    );
    assert_eq!(
        o.code, 1,
        "the last failing command was `false`: {}",
        o.stderr
    );
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let first = &lines[0][..1];
    assert_eq!(lines[1], format!("{first}-end"), "{lines:?}");
    assert!(lines[2].ends_with("-start") && lines[3].ends_with("-end"));
    // `ls /locks/job` printed nothing: the lock nodes are gone.
}

#[test]
fn shell_services_lists_registered_instances() {
    let o = shell(
        &[],
        r#"create /services/api/api-1 '{"service":"api","id":"api-1","address":"10.0.0.7","port":8080,"metadata":{"zone":"a"}}' -p --ephemeral
        create /services/api/api-2 '{"service":"api","id":"api-2","address":"10.0.0.8","port":8080}' --ephemeral
        services
        services api
        "#,
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("api                      2 instance(s)"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("api-1                10.0.0.7:8080 zone=a"),
        "{}",
        o.stdout
    );
    let o = shell(
        &["--json"],
        "create /services/db/db-1 '{\"service\":\"db\",\"id\":\"db-1\",\"address\":\"h\",\"port\":5432}' -p --ephemeral\nservices db\nservices\n",
    );
    let v = json_lines(&o.stdout);
    assert_eq!(v[1]["instances"][0]["port"], 5432);
    assert_eq!(v[2]["services"][0]["instances"], 1);
}

#[test]
fn shell_reports_bad_lines_and_goes_on() {
    let o = shell(&[], "ls /\nfrobnicate\nget 'unterminated\nls /\n");
    assert_eq!(o.code, 2);
    assert_eq!(
        o.stderr.lines().filter(|l| l.starts_with("error:")).count(),
        2
    );
}

// ---- across processes, on a shared backend (COORDCTL_TEST_URL) ------------------------------

/// One URL per real backend compiled into the binary (servers from the test kit, or the endpoints in
/// `COORD_ZK_ENDPOINTS` & co.), plus `COORDCTL_TEST_URL` if set; each with a fresh namespace for
/// `test`. A backend whose server cannot be started panics under `COORD_REQUIRE_BACKENDS=1`
/// and is skipped loudly otherwise (the test kit prints the line).
fn shared_urls(test: &str) -> Vec<String> {
    let mut bases: Vec<String> = Vec::new();
    if let Ok(u) = std::env::var("COORDCTL_TEST_URL") {
        if !u.is_empty() {
            bases.push(u);
        }
    }
    for (scheme, kind, session) in [
        ("zk", coord_testkit::Kind::ZooKeeper, "session_timeout"),
        ("etcd", coord_testkit::Kind::Etcd, "session_ttl"),
        ("consul", coord_testkit::Kind::Consul, "session_ttl"),
    ] {
        if !built_with(scheme) {
            continue;
        }
        if let Some(ep) = coord_testkit::shared_endpoints(kind) {
            bases.push(format!("{scheme}://{ep}?{session}=2s"));
        }
    }
    if bases.is_empty() {
        eprintln!(
            "!!! {test}: no real backend compiled into coordctl (see `coordctl backends`) and \
             COORDCTL_TEST_URL unset: the cross-process tests have nothing to run against"
        );
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    bases
        .into_iter()
        .map(|u| {
            let (base, query) = match u.split_once('?') {
                Some((b, q)) => (b.to_owned(), format!("?{q}")),
                None => (u.clone(), String::new()),
            };
            let url = format!(
                "{}/coordctl-{test}-{nanos}{query}",
                base.trim_end_matches('/')
            );
            eprintln!("{test}: running against {url}");
            url
        })
        .collect()
}

#[test]
fn shared_elect_in_one_process_leader_in_another() {
    for url in shared_urls("elect") {
        let a = Live::start(&url, &["elect", "sched", "node-a"]);
        let l = a.expect_line("elected");
        let o = run(Some(&url), &["--json", "leader", "sched"]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        let v = &json_lines(&o.stdout)[0];
        assert_eq!(v["leader"], "node-a");
        assert!(l.contains(&format!("fencing token {}", v["token"])), "{l}");
        // A second candidate waits, and takes over with a larger token when the first resigns.
        let b = Live::start(&url, &["--json", "elect", "sched", "node-b"]);
        std::thread::sleep(Duration::from_millis(500));
        a.interrupt();
        assert_eq!(a.wait(), 0);
        let vb: Value = serde_json::from_str(&b.expect_line("elected")).expect("json");
        assert!(vb["token"].as_u64() > v["token"].as_u64());
        let o = run(Some(&url), &["leader", "sched"]);
        assert!(o.stdout.starts_with("node-b"), "{}", o.stdout);
        b.interrupt();
        assert_eq!(b.wait(), 0);
        assert_eq!(run(Some(&url), &["leader", "sched"]).code, 3);
    }
}

#[test]
fn shared_lock_excludes_a_second_process() {
    for url in shared_urls("lock") {
        let dir = std::env::temp_dir().join(format!("coordctl-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        // Each holder appends start/end to a log; with the lock the two never overlap.
        let script = format!(
            "echo start >> {0}/log; sleep 1; echo end >> {0}/log",
            dir.display()
        );
        let spawn = || {
            let mut c = cmd(Some(&url), &["lock", "job", "--", "sh", "-c", &script]);
            c.stdout(Stdio::null()).stderr(Stdio::null());
            c.spawn().expect("spawn")
        };
        let mut p1 = spawn();
        let mut p2 = spawn();
        assert_eq!(wait_limited(&mut p1, LIMIT).and_then(|s| s.code()), Some(0));
        assert_eq!(wait_limited(&mut p2, LIMIT).and_then(|s| s.code()), Some(0));
        let log = std::fs::read_to_string(dir.join("log")).expect("log");
        assert_eq!(
            log.lines().collect::<Vec<_>>(),
            ["start", "end", "start", "end"]
        );
        let o = run(Some(&url), &["ls", "/locks/job"]);
        assert_eq!(
            (o.code, o.stdout.trim()),
            (0, ""),
            "no lock node left behind"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn shared_ephemeral_lives_while_the_command_runs_and_watch_sees_it() {
    for url in shared_urls("ephemeral") {
        let w = Live::start(&url, &["--json", "watch", "/e", "--count", "2"]);
        w.expect_line("current");
        let e = Live::start(&url, &["create", "/e", "here", "--ephemeral"]);
        e.expect_line("created /e");
        let o = run(Some(&url), &["--json", "stat", "/e"]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(json_lines(&o.stdout)[0]["ephemeral_owner"].is_string());
        e.interrupt();
        assert_eq!(e.wait(), 0);
        let created: Value =
            serde_json::from_str(&w.expect_line("\"event\":\"created\"")).expect("json");
        assert_eq!(created["value"], "here");
        w.expect_line("\"event\":\"deleted\"");
        assert_eq!(w.wait(), 0);
        assert_eq!(run(Some(&url), &["get", "/e"]).code, 3);
    }
}

#[test]
fn shared_persistent_nodes_outlive_the_process() {
    for url in shared_urls("persist") {
        assert_eq!(run(Some(&url), &["create", "/p/q", "v1", "-p"]).code, 0);
        assert_eq!(
            run(Some(&url), &["set", "/p/q", "v2", "--version", "99"]).code,
            4
        );
        let o = run(Some(&url), &["get", "/p/q"]);
        assert_eq!(o.stdout.trim(), "v1");
        assert_eq!(run(Some(&url), &["rm", "/p"]).code, 4);
        assert_eq!(run(Some(&url), &["rm", "/p", "-r"]).code, 0);
        assert_eq!(run(Some(&url), &["ls", "/p"]).code, 3);
    }
}

/// Every command not covered by the tests above, on each real backend: versions are opaque
/// there (revisions, indexes), so the test reads them back instead of assuming numbers.
#[test]
fn shared_every_command_on_real_backends() {
    for url in shared_urls("every") {
        let u = Some(url.as_str());
        let o = run(
            u,
            &["--json", "create", "/app/config/db", "host=a", "--parents"],
        );
        assert_eq!(o.code, 0, "create: {}", o.stderr);
        let got = &json_lines(&run(u, &["--json", "get", "/app/config/db"]).stdout)[0];
        assert_eq!(got["value"], "host=a");
        let v = got["version"].to_string();
        let o = run(u, &["set", "/app/config/db", "host=b", "--version", &v]);
        assert_eq!(o.code, 0, "set at the current version: {}", o.stderr);
        let o = run(u, &["set", "/app/config/db", "host=c", "--version", &v]);
        assert_eq!(o.code, 4, "a stale version is a conflict: {}", o.stdout);
        let st = &json_lines(&run(u, &["--json", "stat", "/app/config/db"]).stdout)[0];
        assert_ne!(st["version"].to_string(), v, "{st}");
        assert_eq!(st["ephemeral_owner"], Value::Null);
        let ls = &json_lines(&run(u, &["--json", "ls", "/app"]).stdout)[0];
        assert_eq!(ls["children"], serde_json::json!(["config"]));
        let a = &json_lines(
            &run(
                u,
                &[
                    "--json",
                    "create",
                    "/app/seq/n-",
                    "x",
                    "--sequential",
                    "--parents",
                ],
            )
            .stdout,
        )[0];
        let b =
            &json_lines(&run(u, &["--json", "create", "/app/seq/n-", "y", "--sequential"]).stdout)
                [0];
        let (pa, pb) = (
            a["path"].as_str().unwrap_or(""),
            b["path"].as_str().unwrap_or(""),
        );
        assert!(pa.starts_with("/app/seq/n-") && pb > pa, "{pa} then {pb}");
        let tree = run(u, &["--json", "tree", "/app"]);
        let paths: Vec<String> = json_lines(&tree.stdout)
            .iter()
            .filter_map(|n| n["path"].as_str().map(str::to_owned))
            .collect();
        assert!(paths.contains(&"/app/config/db".to_owned()), "{paths:?}");
        assert!(paths.contains(&pb.to_owned()), "{paths:?}");
        // An ephemeral lives as long as the coordctl process that made it.
        let o = run_with(
            cmd(u, &["shell"]),
            "create /app/workers/w1 x --ephemeral --parents\nls /app/workers\n",
        );
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("w1"), "{}", o.stdout);
        let after = &json_lines(&run(u, &["--json", "ls", "/app/workers"]).stdout)[0];
        assert_eq!(
            after["children"],
            serde_json::json!([]),
            "the ephemeral outlived its process"
        );
        // services, from instances registered in the same process: written by hand in the
        // generic layout's JSON, so read in that layout (Consul's default is its catalog).
        let sep = if url.contains('?') { '&' } else { '?' };
        let generic = format!("{url}{sep}registry=generic");
        let o = run_with(
            cmd(Some(&generic), &["shell"]),
            "create /services/api/a1 '{\"service\":\"api\",\"id\":\"a1\",\"address\":\"10.0.0.1\",\"port\":80}' -p --ephemeral\nservices api\n",
        );
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("10.0.0.1:80"), "{}", o.stdout);
        // rm: refused on a non-empty node, recursive works, and then get is not found.
        assert_eq!(run(u, &["rm", "/app"]).code, 4);
        let o = run(u, &["rm", "/app", "--recursive"]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert_eq!(run(u, &["get", "/app/config/db"]).code, 3);
        assert_eq!(run(u, &["leader", "nobody"]).code, 3);
    }
}
