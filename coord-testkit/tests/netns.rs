//! The partition harness itself: a cut really drops traffic between the sides (and not within
//! one), a heal restores it, the service net is never cut, and every namespace is gone after
//! `Drop`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use coord_testkit::netns::{run_in, Net, SERVICE_IP};
use coord_testkit::require_backends;

/// Whether host `from` can open a TCP connection to `addr` within 1 s.
fn reaches(net: &Net, from: usize, addr: String) -> bool {
    run_in(&net.host(from).ns, move || {
        let Ok(sa) = addr.parse() else { return false };
        TcpStream::connect_timeout(&sa, Duration::from_secs(1)).is_ok()
    })
    .expect("run in the namespace")
}

fn namespaces() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn isolate_cuts_the_cluster_net_only_and_drop_removes_everything() {
    let mut net = match Net::new(3) {
        Ok(n) => n,
        Err(e) if require_backends() => {
            panic!("network namespaces are required (COORD_REQUIRE_BACKENDS=1): {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: network namespaces not available: {e}");
            return;
        }
    };
    let names: Vec<String> = net.hosts().iter().map(|h| h.ns.clone()).collect();
    // A listener in host 1 on its cluster address, one on the service net.
    let ip1 = net.host(1).ip.clone();
    let l1 = run_in(&net.host(1).ns, move || {
        TcpListener::bind((ip1.as_str(), 0))
    })
    .expect("run in the namespace")
    .expect("bind in host 1");
    let a1 = l1.local_addr().expect("addr").to_string();
    let service = net.bind_service(0).expect("bind on the service net");
    let sa = service.local_addr().expect("addr").to_string();
    assert!(sa.starts_with(SERVICE_IP));
    assert!(reaches(&net, 0, a1.clone()), "hosts must reach each other");
    net.isolate(&[1]).expect("isolate");
    assert_eq!(net.isolated(), vec![1]);
    assert!(
        !reaches(&net, 0, a1.clone()),
        "a cut host must be unreachable"
    );
    assert!(reaches(&net, 1, sa.clone()), "the service net is never cut");
    // A side of two: its hosts reach each other and nothing else.
    net.isolate(&[0, 1]).expect("isolate a side of two");
    assert_eq!(net.isolated(), vec![0, 1]);
    assert!(
        reaches(&net, 0, a1.clone()),
        "hosts on one side must reach each other"
    );
    assert!(
        !reaches(&net, 2, a1.clone()),
        "the other side must not reach them"
    );
    net.heal_all().expect("heal");
    assert!(net.isolated().is_empty());
    assert!(
        reaches(&net, 0, a1.clone()),
        "a healed host must be reachable"
    );
    // The service listener answers from a cut host too (accept one and echo a byte).
    // The earlier reachability probe is the first connection in the backlog: skip it.
    let t = std::thread::spawn(move || {
        for _ in 0..3 {
            let (mut c, _) = service.accept().expect("accept");
            let mut b = [0u8; 1];
            if c.read_exact(&mut b).is_ok() {
                c.write_all(&b).expect("write");
                return;
            }
        }
    });
    net.isolate(&[0]).expect("isolate");
    let echoed = run_in(&net.host(0).ns, move || {
        let mut c = TcpStream::connect(sa.as_str()).expect("connect");
        c.write_all(b"x").expect("write");
        let mut b = [0u8; 1];
        c.read_exact(&mut b).expect("read");
        b[0]
    })
    .expect("run in the namespace");
    assert_eq!(echoed, b'x');
    t.join().expect("echo thread");
    drop(l1);
    let sw = net.switch_ns().to_owned();
    drop(net);
    let left = namespaces();
    for n in names.iter().chain([&sw]) {
        assert!(!left.contains(n.as_str()), "{n} left behind: {left}");
    }
}
